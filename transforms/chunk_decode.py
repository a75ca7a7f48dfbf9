"""Decodes a local checkpoint's stored chunks ourselves: zstd frames from the page cache into the slice.

Reading MaxText -> HF is mostly decoding. Through tensorstore, decoding a checkpoint of 3.85 GB took
11.4 s of CPU on the development VM (most of it the kernel's, giving fresh pages to its buffers);
zstd's own work is about 3 s of it (docs/performance.md). Here every stored chunk is mapped, not
copied, and each zstd frame decompresses straight into the array the caller gets, or through one
chunk-sized buffer when the chunk is not one contiguous part of it (an edge chunk, a chunk holding
several layers of which one is read).

Only the encoding MaxText and ckptflow write is decoded here: zarr3, the `bytes` codec
(little-endian) then `zstd`, in `sharding_indexed` shards whose index (`bytes` + `crc32c`) sits at
either end, or unsharded; each chunk an OCDBT value or its own file, on a local disk. Any other
array, and every gs:// checkpoint, is read by tensorstore. A chunk that is missing or does not
decode to its size is a one-line error, as tensorstore's would be.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import math
import threading
from typing import Any, Callable

import google_crc32c
import numpy as np
import zstandard

from transforms import cpu_pool, ocdbt_index, orbax_layout, storage
from transforms.errors import ConversionError

_MISSING = 2**64 - 1  # a shard index entry (offset and length) of an inner chunk never written
_LITTLE_ENDIAN = {"name": "bytes", "configuration": {"endian": "little"}}
_INDEX_CODECS = [_LITTLE_ENDIAN, {"name": "crc32c"}]
# Metadata that does not change how a chunk's bytes decode (the chunk grid is read on its own).
_IRRELEVANT = {"shape", "chunk_grid", "fill_value", "attributes", "dimension_names", "node_type", "zarr_format",
               "data_type", "codecs", "chunk_key_encoding"}


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
  """How one array's chunks are stored: the grid of stored chunks (zarr3 shards) and, inside each
  shard, the grid of zstd frames."""
  shape: tuple[int, ...]
  stored: tuple[int, ...]  # a stored chunk's shape (the shard's, when sharded)
  inner: tuple[int, ...] | None  # a frame's shape inside a shard; None when each stored chunk is one frame
  index_at_end: bool
  dtype: np.dtype


def layout_of(metadata: dict[str, Any], dtype: np.dtype) -> ChunkLayout | None:
  """The layout when the zarr3 metadata (as tensorstore normalises it) uses only what is decoded
  here; None for anything else."""
  if metadata.get("zarr_format") != 3 or set(metadata) - _IRRELEVANT:
    return None
  key_encoding = metadata.get("chunk_key_encoding", {})
  if key_encoding.get("name") != "default" or key_encoding.get("configuration", {}).get("separator", "/") != "/":
    return None
  grid = metadata.get("chunk_grid", {})
  if grid.get("name") != "regular" or dtype.byteorder == ">" or dtype.hasobject:
    return None
  stored = tuple(grid["configuration"]["chunk_shape"])
  codecs = metadata.get("codecs", [])
  if _is_bytes_then_zstd(codecs, dtype):
    return ChunkLayout(tuple(metadata["shape"]), stored, None, True, dtype)
  if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
    return None
  config = codecs[0].get("configuration", {})
  inner = tuple(config.get("chunk_shape", ()))
  location = config.get("index_location", "end")
  if (not _is_bytes_then_zstd(config.get("codecs", []), dtype) or config.get("index_codecs") != _INDEX_CODECS
      or location not in ("start", "end") or len(inner) != len(stored)
      or any(i <= 0 or s % i for s, i in zip(stored, inner))):
    return None
  return ChunkLayout(tuple(metadata["shape"]), stored, inner, location == "end", dtype)


def _is_bytes_then_zstd(codecs: list[dict[str, Any]], dtype: np.dtype) -> bool:
  if len(codecs) != 2 or codecs[1].get("name") != "zstd" or codecs[0].get("name") != "bytes":
    return False
  endian = codecs[0].get("configuration", {}).get("endian")
  return endian == "little" or (endian is None and dtype.itemsize == 1)


class ChunkDecoder:
  """Reads regions of one array of a local checkpoint by decoding its stored chunks."""

  def __init__(self, items: str, array: str, layout: ChunkLayout, stored: Callable[[str], Any]):
    self.items = items
    self.array = array
    self.layout = layout
    self._stored = stored  # a chunk key -> its bytes (a buffer), or None when not stored
    self._key = orbax_layout.array_key(array)

  def read(self, expr: tuple) -> "Decoding":
    """Starts decoding the region `expr` (per axis an int, or a slice with step 1) on the decoding
    threads; `.result()` is the array."""
    bounds = _bounds(expr, self.layout.shape)
    kept = [isinstance(e, slice) for e in expr]
    out = np.empty([hi - lo for (lo, hi), k in zip(bounds, kept) if k], self.layout.dtype)
    cells = [range(lo // c, -(-hi // c)) if hi > lo else range(0) for (lo, hi), c in zip(bounds, self.layout.stored)]
    pool = cpu_pool.pool("decode")  # as many threads as tensorstore's would be
    jobs = [pool.submit(self._decode_stored_chunk, cell, bounds, kept, out) for cell in itertools.product(*cells)]
    return Decoding(out, jobs)

  def _decode_stored_chunk(self, cell: tuple[int, ...], bounds, kept, out: np.ndarray) -> None:
    key = f"{self._key}/c" + "".join(f"/{i}" for i in cell)
    data = self._stored(key)
    if data is None:
      raise ConversionError(f"{self.items}: cannot read {self.array} (chunk {key}): it is missing; the checkpoint "
                            "is incomplete or damaged")
    data = memoryview(data).cast("B")
    stored = self.layout.stored
    origin = [i * c for i, c in zip(cell, stored)]
    if self.layout.inner is None:
      self._decode_frame(data, key, origin, stored, bounds, kept, out)
      return
    inner = self.layout.inner
    per_shard = [s // i for s, i in zip(stored, inner)]
    entries = self._shard_index(data, key, math.prod(per_shard))
    ranges = [range(max(lo - o, 0) // i, -(-(min(hi, o + s) - o) // i))
              for (lo, hi), o, s, i in zip(bounds, origin, stored, inner)]
    for position in itertools.product(*ranges):
      offset, length = entries[np.ravel_multi_index(position, per_shard)] if per_shard else entries[0]
      if offset == _MISSING and length == _MISSING:
        raise ConversionError(f"{self.items}: cannot read {self.array} (chunk {key}): its part {list(position)} is "
                              "missing; the checkpoint is incomplete or damaged")
      if offset + length > len(data):
        raise self._damaged(key, f"its index points past its {len(data)} bytes")
      frame_origin = [o + p * i for o, p, i in zip(origin, position, inner)]
      self._decode_frame(data[offset:offset + length], key, frame_origin, inner, bounds, kept, out)

  def _shard_index(self, data: memoryview, key: str, count: int) -> np.ndarray:
    size = 16 * count + 4
    if len(data) < size:
      raise self._damaged(key, f"{len(data)} bytes cannot hold its index of {size}")
    index = data[len(data) - size:] if self.layout.index_at_end else data[:size]
    if google_crc32c.value(bytes(index[:-4])) != int.from_bytes(index[-4:], "little"):
      raise self._damaged(key, "its index fails its CRC-32C")
    return np.frombuffer(index[:-4], "<u8").reshape(count, 2).tolist()

  def _decode_frame(self, frame: memoryview, key: str, origin, shape, bounds, kept, out: np.ndarray) -> None:
    """Decodes one zstd frame holding the chunk at `origin` and puts its part inside `bounds` into `out`."""
    lo = [max(o, b[0]) for o, b in zip(origin, bounds)]
    hi = [min(o + s, b[1]) for o, s, b in zip(origin, shape, bounds)]
    # `...` keeps a 0-d array a view: out[()] would be a copy of its one value.
    target = out[(*(slice(l - b[0], h - b[0]) for l, h, b, k in zip(lo, hi, bounds, kept) if k), ...)]
    whole = all(l == o and h == o + s for l, h, o, s in zip(lo, hi, origin, shape))
    if whole and target.flags.c_contiguous:
      self._decompress(frame, target, key)
      return
    chunk = np.empty(shape, self.layout.dtype)
    self._decompress(frame, chunk, key)
    target[...] = chunk[tuple(slice(l - o, h - o) if k else l - o for l, h, o, k in zip(lo, hi, origin, kept))]

  def _decompress(self, frame: memoryview, into: np.ndarray, key: str) -> None:
    buffer = into.reshape(-1).view(np.uint8)
    done = 0
    with _decompressor().stream_reader(frame) as reader:
      try:
        while done < buffer.size:
          n = reader.readinto(buffer[done:])
          if not n:
            break
          done += n
        extra = reader.read(1)
      except zstandard.ZstdError as e:
        raise self._damaged(key, f"zstd: {e}") from None
    if done != buffer.size or extra:
      raise self._damaged(key, f"it decodes to {'more' if extra else done} bytes, not {buffer.size}")

  def _damaged(self, key: str, what: str) -> ConversionError:
    return ConversionError(f"{self.items}: cannot read {self.array} (chunk {key}): {what}; the checkpoint is "
                           "incomplete or damaged")


class Decoding:
  """A region being decoded; `result()` waits for it, like a tensorstore read's future."""

  def __init__(self, out: np.ndarray, jobs: list[concurrent.futures.Future]):
    self._out = out
    self._jobs = jobs

  def result(self) -> np.ndarray:
    for job in self._jobs:
      job.result()
    return self._out


def decoder(items: str, array: str, metadata: dict[str, Any], dtype: np.dtype, use_ocdbt: bool) -> ChunkDecoder | None:
  """A decoder for one array of a checkpoint on a local disk, when its encoding is decoded here."""
  if not storage.is_local(items):
    return None
  layout = layout_of(metadata, dtype)
  if layout is None:
    return None
  if use_ocdbt:
    values = ocdbt_index.stored_values(items)
    if values is None:
      return None
    return ChunkDecoder(items, array, layout, values.view)
  return ChunkDecoder(items, array, layout, functools.partial(_chunk_file, items))


def _chunk_file(items: str, key: str) -> Any:
  path = storage.join(items, key)
  if not storage.exists(path):
    return None
  return storage.read_range(path, 0, storage.size(path))


def _bounds(expr: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
  """Per axis [start, stop) of the region `expr` selects."""
  if len(expr) != len(shape):
    raise ValueError(f"a region of {len(expr)} axes for an array of {len(shape)}")
  bounds = []
  for e, n in zip(expr, shape):
    if isinstance(e, slice):
      start, stop, step = e.indices(n)
      if step != 1:
        raise ValueError(f"a region with step {step}")
      bounds.append((start, max(start, stop)))
    else:
      if not -n <= e < n:
        raise IndexError(f"position {e} of an axis of {n}")
      bounds.append((e % n, e % n + 1))
  return bounds


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
  """One per thread: a ZstdDecompressor is not safe to share between threads."""
  found = getattr(_local, "decompressor", None)
  if found is None:
    found = _local.decompressor = zstandard.ZstdDecompressor()
  return found
