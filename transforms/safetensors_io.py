"""Safetensors without torch or the safetensors package: header-only planning, ranged reads.

Planning touches only headers, so a 100 GB checkpoint is listed in a few small reads; each
tensor is then fetched with one ranged read, so a worker holds one tensor at a time. We parse
the format ourselves because the package's numpy backend cannot read F8_E4M3.
"""

import dataclasses
import json
import math
import os
import struct
import uuid
from typing import Any

import ml_dtypes
import numpy as np

from transforms.errors import ConversionError
from transforms import storage
from transforms.direct_io import DirectFile

DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),  # power-of-two scales (DeepSeek V4's FP8 and FP4)
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}

# The safetensors package writes tensors sorted by this rank (descending), then by name;
# write_safetensors does the same so its files are byte-identical to the package's.
_PACKAGE_RANK = {code: rank for rank, code in enumerate(
    ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32",
     "F32", "F64", "I64", "U64"])}

MAX_HEADER_BYTES = 100_000_000  # The package's own limit.
# What transformers' save_pretrained puts in every shard's __metadata__.
HF_FILE_METADATA = {"format": "pt"}
INDEX_FILE = "model.safetensors.index.json"
_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_WRITE_SLICE = 16 << 20


def dtype_code(dtype: Any) -> str:
  """The safetensors code ("BF16", ...) for a numpy dtype."""
  code = _CODES.get(np.dtype(dtype))
  if code is None:
    raise ConversionError(f"dtype {np.dtype(dtype)} has no safetensors code")
  return code


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """Where one tensor's bytes are: [start, end) are absolute offsets in `file`."""
  file: str
  name: str
  dtype: str
  shape: tuple[int, ...]
  start: int
  end: int

  @property
  def nbytes(self) -> int:
    return self.end - self.start

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    """Bytes of rows [start, stop) of the first axis (all of them for None)."""
    if rows is None:
      return self.nbytes
    return (rows[1] - rows[0]) * (self.nbytes // self.shape[0] if self.shape[0] else 0)

  def to_json(self) -> dict[str, Any]:
    return {"file": self.file, "name": self.name, "dtype": self.dtype,
            "shape": list(self.shape), "start": self.start, "end": self.end}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "TensorRef":
    return cls(file=d["file"], name=d["name"], dtype=d["dtype"],
               shape=tuple(int(x) for x in d["shape"]), start=int(d["start"]),
               end=int(d["end"]))


class ScaledTensorRef:
  """What every quantized source (FP8 blocks, FP4, MXFP4, packed int4) shares: one data tensor and
  its scales, read together and presented as the float32 tensor the family spec names. Subclasses
  are dataclasses that say which two refs those are (`stored`) and how they decode."""

  dtype = "F32"

  @property
  def stored(self) -> tuple[TensorRef, TensorRef]:
    raise NotImplementedError

  @property
  def file(self) -> str:
    return self.stored[0].file

  @property
  def files(self) -> tuple[str, ...]:
    """Every file read (scales may sit in another shard than their data)."""
    return tuple(sorted({ref.file for ref in self.stored}))

  @property
  def nbytes(self) -> int:
    """What is read: data and scales."""
    return sum(ref.nbytes for ref in self.stored)

  @property
  def dequantized_nbytes(self) -> int:
    return math.prod(self.shape) * 4  # pylint: disable=no-member

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    return sum(ref.rows_nbytes(rows) for ref in self.stored)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(path: str, name: str, entry: Any, data_start: int, file_size: int) -> TensorRef:
  if not isinstance(entry, dict):
    raise ConversionError(f"{path}: tensor {name}: header entry is not an object")
  code = entry.get("dtype")
  if code not in DTYPES:
    raise ConversionError(f"{path}: tensor {name} has unknown dtype {code!r}")
  shape = entry.get("shape")
  if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
    raise ConversionError(f"{path}: tensor {name} has a bad shape {shape!r}")
  offsets = entry.get("data_offsets")
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))
      or not 0 <= offsets[0] <= offsets[1]):
    raise ConversionError(f"{path}: tensor {name} has bad data_offsets {offsets!r}")
  want = math.prod(shape) * DTYPES[code].itemsize
  if offsets[1] - offsets[0] != want:
    raise ConversionError(
        f"{path}: tensor {name}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes "
        f"but {code} {shape} needs {want}")
  start, end = data_start + offsets[0], data_start + offsets[1]
  if end > file_size:
    raise ConversionError(
        f"{path}: truncated: tensor {name} needs bytes up to {end} but the file has "
        f"{file_size}; re-download the shard")
  return TensorRef(path, name, code, tuple(shape), start, end)


def read_header(path: str) -> dict[str, TensorRef]:
  """Every tensor in one file, from two small ranged reads; tensor bytes are never read."""
  file_size = storage.size(path)
  if file_size < 8:
    raise ConversionError(
        f"{path}: only {file_size} bytes, too short to be a safetensors file")
  (header_len,) = struct.unpack("<Q", storage.read_bytes(path, 0, 8))
  if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
    raise ConversionError(
        f"{path}: header length {header_len} is impossible for a {file_size}-byte file "
        "(limit 100 MB); not a safetensors file, or truncated")
  raw = storage.read_bytes(path, 8, 8 + header_len)
  if len(raw) != header_len:
    raise ConversionError(f"{path}: file shrank while reading its header")
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f"{path}: header is not valid JSON ({e})") from None
  if not isinstance(header, dict):
    raise ConversionError(f"{path}: header is not a JSON object")
  data_start = 8 + header_len
  refs = {name: _parse_entry(path, name, entry, data_start, file_size)
          for name, entry in header.items() if name != "__metadata__"}
  ordered = sorted(refs.values(), key=lambda r: (r.start, r.end))
  for before, after in zip(ordered, ordered[1:]):
    if after.start < before.end:
      raise ConversionError(f"{path}: tensors {before.name} and {after.name} overlap in the file; "
                            "the shard is corrupt, re-download it")
  return refs


def read_tensor(ref: TensorRef, rows: tuple[int, int] | None = None) -> np.ndarray:
  """The tensor, or rows [start, stop) of its first axis, from exactly one ranged read (read-only).

  A quantized source (transforms.quantized.QuantizedRef) reads its data and scales and
  dequantizes them to float32 itself.
  """
  if not isinstance(ref, TensorRef):
    return ref.read(rows)
  dtype = DTYPES[ref.dtype]
  shape, start, end = ref.shape, ref.start, ref.end
  if rows is not None:
    row_bytes = ref.nbytes // ref.shape[0] if ref.shape[0] else 0
    shape = (rows[1] - rows[0],) + tuple(ref.shape[1:])
    start, end = ref.start + rows[0] * row_bytes, ref.start + rows[1] * row_bytes
  if end == start:
    return np.zeros(shape, dtype)
  data = storage.read_range(ref.file, start, end)
  if len(data) != end - start:
    raise ConversionError(
        f"{ref.file}: truncated: tensor {ref.name} needs bytes up to {end} but only "
        f"{start + len(data)} could be read; re-download the shard")
  return np.frombuffer(data, dtype=dtype).reshape(shape)


def _read_index(index_path: str) -> dict[str, str]:
  try:
    index = json.loads(storage.read_text(index_path))
  except json.JSONDecodeError as e:
    raise ConversionError(f"{index_path}: not valid JSON ({e})") from None
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not all(
      isinstance(v, str) for v in weight_map.values()):
    raise ConversionError(f"{index_path}: no weight_map of tensor name -> shard file")
  return weight_map


def list_checkpoint(model_dir: str) -> dict[str, TensorRef]:
  """All tensors of a HF checkpoint directory, from its index (if any) and shard headers."""
  index_path = storage.join(model_dir, INDEX_FILE)
  weight_map = _read_index(index_path) if storage.exists(index_path) else None
  if weight_map is not None:
    shards = sorted(set(weight_map.values()))
    for shard in shards:
      if not storage.exists(storage.join(model_dir, shard)):
        raise ConversionError(
            f"{index_path}: lists shard {shard}, but {storage.join(model_dir, shard)} "
            "does not exist")
  else:
    shards = [n for n in storage.list_names(model_dir) if n.endswith(_SUFFIX)]
    if not shards:
      pickles = [n for n in storage.list_names(model_dir) if n.endswith(PICKLE_SUFFIXES)]
      if pickles:
        raise ConversionError(
            f"{model_dir}: only PyTorch pickle files ({', '.join(pickles[:3])}); ckptflow never unpickles "
            "untrusted data: convert them to safetensors on a machine you trust, then point here")
      raise ConversionError(
          f"{model_dir}: no *.safetensors files and no {INDEX_FILE}")

  found: dict[str, TensorRef] = {}
  for shard in shards:
    for name, ref in read_header(storage.join(model_dir, shard)).items():
      if name in found:
        raise ConversionError(
            f"{model_dir}: tensor {name} is in two shards: {found[name].file} and {ref.file}")
      found[name] = ref
  if weight_map is None:
    return found

  out = {}
  for name, shard in weight_map.items():
    ref = found.get(name)
    if ref is None or ref.file != storage.join(model_dir, shard):
      raise ConversionError(
          f"{index_path}: tensor {name} is mapped to {shard}, but that shard's header "
          "does not contain it")
    out[name] = ref
  return out


def file_size(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> int:
  """The size of the file SafetensorsWriter makes from `entries`: planned before any byte is written."""
  data = sum(math.prod(shape) * DTYPES[code].itemsize for _, code, shape in entries)
  return len(_header_bytes(entries, metadata)) + data


def _header_bytes(entries: list[tuple[str, str, tuple[int, ...]]],
                  metadata: dict[str, str] | None) -> bytes:
  """The 8-byte length + the JSON header, padded with spaces to a multiple of 8 bytes."""
  header: dict[str, Any] = {}
  if metadata:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
      raise ConversionError("safetensors metadata must map str to str")
    header["__metadata__"] = dict(metadata)
  offset = 0
  for name, code, shape in entries:
    if code not in DTYPES:
      raise ConversionError(f"tensor {name}: unknown safetensors dtype {code!r}")
    if name in header:
      raise ConversionError(f"tensor {name} is listed twice")
    nbytes = math.prod(shape) * DTYPES[code].itemsize
    header[name] = {"dtype": code, "shape": [int(d) for d in shape],
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw


class SafetensorsWriter:
  """Writes one safetensors file tensor by tensor, so memory holds one array at a time.

  The header is fixed up front from `entries` (name, dtype code, shape, in file order). A local
  file may still be writing an array after write() returns: the caller must not change it.
  Until close() succeeds nothing exists at `path`: local files are written to
  `path.<random>.tmp` around the page cache (DirectFile), fsynced and renamed; gs:// uploads are
  committed only on close.
  """

  def __init__(self, path: str, entries: list[tuple[str, str, tuple[int, ...]]],
               metadata: dict[str, str] | None = None):
    self.path = path
    self._entries = [(name, code, tuple(int(d) for d in shape)) for name, code, shape in entries]
    head = _header_bytes(self._entries, metadata)
    self._next = 0
    self._rows = 0
    self._closed = False
    if storage.is_gcs(path):
      self._tmp = None
      # autocommit=False: a dropped or aborted writer never finalizes a partial object.
      self._file = storage.filesystem(path).open(path, "wb", autocommit=False)
    else:
      # Unique, so a retried or duplicated Beam work item cannot interleave with this one.
      self._tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._file = DirectFile(self._tmp)
    self._file.write(head)

  def write(self, name: str, array: np.ndarray) -> None:
    """Appends the next tensor, whole or as its next rows (a split tensor comes in row blocks); it
    must match the next entry's name, dtype and shape."""
    if self._closed:
      raise ConversionError(f"{self.path}: write of {name} after close")
    if self._next >= len(self._entries):
      raise ConversionError(f"{self.path}: write of {name}, but all tensors are written")
    want_name, code, shape = self._entries[self._next]
    if name != want_name:
      raise ConversionError(
          f"{self.path}: tensor {name} written out of order; expected {want_name}")
    array = np.asarray(array)
    whole = array.shape == shape
    fits = (array.ndim == len(shape) >= 1 and array.shape[1:] == shape[1:]
            and self._rows + array.shape[0] <= shape[0])
    if array.dtype != DTYPES[code] or not (whole and self._rows == 0 or fits):
      raise ConversionError(
          f"{self.path}: tensor {name} is {array.dtype} {list(array.shape)}, "
          f"expected {code} {list(shape)}" + (f" from row {self._rows}" if self._rows else ""))
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    if self._tmp is not None:
      self._file.write(flat)  # Queued whole: the disk takes it while the caller makes the next tensor.
    else:  # Slices keep gcsfs's upload buffer small instead of a second copy of the whole array.
      for i in range(0, flat.size, _WRITE_SLICE):
        self._file.write(flat[i:i + _WRITE_SLICE].data)
    self._rows = 0 if whole else self._rows + array.shape[0]
    if whole or self._rows == shape[0]:
      self._next += 1
      self._rows = 0

  def close(self) -> None:
    """Makes the file visible; refuses (and discards it) unless every tensor was written."""
    if self._closed:
      return
    if self._next != len(self._entries):
      missing = self._entries[self._next][0]
      self.abort()
      raise ConversionError(
          f"{self.path}: closed after {self._next} of {len(self._entries)} tensors "
          f"(next was {missing}); nothing was written")
    self._closed = True
    self._file.close()
    if self._tmp is None:
      self._file.commit()
    else:
      os.replace(self._tmp, self.path)

  def abort(self) -> None:
    """Drops everything written so far; nothing appears at `path`."""
    if self._closed:
      return
    self._closed = True
    if self._tmp is None:
      self._file.discard()
      self._file.closed = True
    else:
      self._file.abort()
      storage.remove_tree(self._tmp)

  def __enter__(self) -> "SafetensorsWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def package_order(names_and_codes: list[tuple[str, str]]) -> list[str]:
  """Names in the order the safetensors package lays tensors out: dtype rank descending, then name."""
  return [n for n, _ in sorted(names_and_codes, key=lambda nc: (-_PACKAGE_RANK[nc[1]], nc[0]))]


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` in the safetensors package's own order (byte-identical output)."""
  arrays = {name: np.asarray(a) for name, a in tensors.items()}
  codes = {name: dtype_code(a.dtype) for name, a in arrays.items()}
  order = package_order(list(codes.items()))
  entries = [(name, codes[name], arrays[name].shape) for name in order]
  with SafetensorsWriter(path, entries, metadata) as writer:
    for name in order:
      writer.write(name, arrays[name])
