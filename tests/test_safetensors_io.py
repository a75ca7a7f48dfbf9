"""transforms.safetensors_io: bit-exact against the safetensors package, loud on bad input."""

import json
import os
import pickle
import struct
import time

import ml_dtypes  # noqa: F401  (safetensors.numpy reads BF16 only once this is imported)
import numpy as np
import pytest
import safetensors.numpy

from transforms.errors import ConversionError
from transforms import safetensors_io as sio
from transforms import storage


def _sample() -> dict[str, np.ndarray]:
  """One small tensor per dtype, with values that exercise every byte, plus odd shapes."""
  rng = np.random.default_rng(0)
  out = {}
  for code, dtype in sio.DTYPES.items():
    if code == "BOOL":
      arr = rng.integers(0, 2, (3, 5)).astype(bool)
    else:  # Random bit patterns (NaNs included) reinterpreted as the dtype.
      arr = rng.integers(0, 256, 15 * dtype.itemsize, dtype=np.uint8).view(dtype).reshape(3, 5)
    out[f"model.{code.lower()}.weight"] = arr
  out["scalar"] = np.array(1.5, dtype=np.float32)
  out["empty"] = np.zeros((0, 4), dtype=ml_dtypes.bfloat16)
  return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path) -> str:
  if request.param == "local":
    return str(tmp_path / "m")
  return f"gs://{request.getfixturevalue('gcs_bucket')}/m"


def test_dtype_codes_round_trip():
  assert sio.DTYPES["BF16"] == np.dtype(ml_dtypes.bfloat16)
  assert sio.DTYPES["F8_E4M3"] == np.dtype(ml_dtypes.float8_e4m3fn)
  for code, dtype in sio.DTYPES.items():
    assert sio.dtype_code(dtype) == code
  assert sio.dtype_code(np.float32) == "F32"
  with pytest.raises(ConversionError, match="complex64"):
    sio.dtype_code(np.complex64)


def test_bytes_identical_to_safetensors_package(tmp_path):
  tensors = _sample()
  ours = tmp_path / "ours.safetensors"
  sio.write_safetensors(str(ours), tensors, metadata={"format": "pt"})
  assert ours.read_bytes() == safetensors.numpy.save(tensors, metadata={"format": "pt"})
  # The package reads our file back, except float8: its numpy backend cannot load those.
  readable = {k: v for k, v in tensors.items()
              if v.dtype not in (sio.DTYPES["F8_E4M3"], sio.DTYPES["F8_E5M2"], sio.DTYPES["F8_E8M0"])}
  sio.write_safetensors(str(ours), readable)
  back = safetensors.numpy.load_file(str(ours))
  assert back.keys() == readable.keys()
  for name, arr in readable.items():
    assert _same(back[name], arr), name


def test_reads_package_file_bit_exact(tmp_path):
  tensors = _sample()
  path = str(tmp_path / "pkg.safetensors")
  safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
  refs = sio.read_header(path)
  assert refs.keys() == tensors.keys()
  header_len = struct.unpack("<Q", open(path, "rb").read(8))[0]
  for name, arr in tensors.items():
    ref = refs[name]
    assert (ref.file, ref.name, ref.dtype, ref.shape) == (path, name, sio.dtype_code(arr.dtype),
                                                         arr.shape)
    assert ref.start >= 8 + header_len and ref.nbytes == arr.nbytes
    got = sio.read_tensor(ref)
    assert _same(got, arr), name


def test_tensor_ref_pickle_and_json():
  ref = sio.TensorRef("gs://b/m.safetensors", "w", "BF16", (2, 3), 100, 112)
  assert ref.nbytes == 12
  assert pickle.loads(pickle.dumps(ref)) == ref
  assert sio.TensorRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref


def test_round_trip_local_and_gcs(root, tmp_path):
  tensors = _sample()
  path = storage.join(root, "model.safetensors")
  sio.write_safetensors(path, tensors)
  local_copy = str(tmp_path / "copy.safetensors")
  sio.write_safetensors(local_copy, tensors)
  assert storage.read_bytes(path) == open(local_copy, "rb").read()
  refs = sio.read_header(path)
  for name, arr in tensors.items():
    assert _same(sio.read_tensor(refs[name]), arr), name
  assert sio.list_checkpoint(root) == refs


def test_streaming_writer_large_tensor_on_gcs(gcs_bucket):
  """Bigger than gcsfs's 256 KiB upload block and our write slice, so it streams in parts."""
  path = f"gs://{gcs_bucket}/big.safetensors"
  big = np.arange(300_000, dtype=np.float32).reshape(600, 500)
  small = np.ones((7,), ml_dtypes.bfloat16)
  with sio.SafetensorsWriter(path, [("big", "F32", (600, 500)), ("small", "BF16", (7,))],
                             metadata={"format": "pt"}) as w:
    w.write("big", big)
    w.write("small", small)
  refs = sio.read_header(path)
  assert _same(sio.read_tensor(refs["big"]), big)
  assert _same(sio.read_tensor(refs["small"]), small)


def _spy_requests(monkeypatch, fs) -> list:
  """Records (method, url, Range header, body bytes) of every HTTP request gcsfs makes."""
  calls = []
  real = fs._request  # pylint: disable=protected-access

  async def spy(method, path, *args, **kwargs):
    status, headers, info, contents = await real(method, path, *args, **kwargs)
    calls.append((method, path, (kwargs.get("headers") or {}).get("Range"), len(contents or b"")))
    return status, headers, info, contents

  monkeypatch.setattr(fs, "_request", spy)
  return calls


def test_gcs_reads_only_the_needed_bytes(gcs_server, gcs_bucket, monkeypatch):
  path = f"gs://{gcs_bucket}/m.safetensors"
  tensors = {"a": np.arange(16_384, dtype=np.float32), "b": np.arange(8, dtype=np.int64),
             "c": np.arange(4096, dtype=np.int16)}
  sio.write_safetensors(path, tensors)
  file_size = storage.size(path)
  calls = _spy_requests(monkeypatch, storage.filesystem(path))

  before_header = gcs_server.log.mark()
  refs = sio.read_header(path)
  header_len = min(r.start for r in refs.values()) - 8
  media = [c for c in calls if "alt=media" in c[1]]
  assert [(c[2], c[3]) for c in media] == [("bytes=0-7", 8),
                                          (f"bytes=8-{7 + header_len}", header_len)]
  assert sum(c[3] for c in media) < 1000 < file_size

  calls.clear()
  # The emulator logs a request after answering it: let the two header reads reach the log first.
  deadline = time.monotonic() + 5
  while (len([l for l in gcs_server.log.since(before_header, until="alt=media") if "alt=media" in l]) < 2
         and time.monotonic() < deadline):
    time.sleep(0.02)
  mark = gcs_server.log.mark()
  got = sio.read_tensor(refs["c"])
  assert _same(got, tensors["c"])
  ref = refs["c"]
  assert [(c[0], c[2], c[3]) for c in calls] == [("GET", f"bytes={ref.start}-{ref.end - 1}",
                                                  8192)]
  # The emulator answered with a partial-content response.
  new = [line for line in gcs_server.log.since(mark, until="alt=media") if "alt=media" in line]
  assert len(new) == 1 and "\" 206 " in new[0], new


# ---- errors: one ConversionError naming the file (and tensor) ----

def _write(tmp_path, name, data: bytes) -> str:
  path = str(tmp_path / name)
  with open(path, "wb") as f:
    f.write(data)
  return path


def _raw_file(header: dict, data: bytes = b"") -> bytes:
  raw = json.dumps(header).encode()
  return struct.pack("<Q", len(raw)) + raw + data


def test_missing_file(tmp_path):
  path = str(tmp_path / "gone.safetensors")
  with pytest.raises(ConversionError, match=r"gone\.safetensors: no such file"):
    sio.read_header(path)
  with pytest.raises(ConversionError, match=r"gone\.safetensors: no such file"):
    sio.read_tensor(sio.TensorRef(path, "w", "F32", (2,), 16, 24))


@pytest.mark.parametrize("content,pattern", [
    (b"abc", r"bad\.safetensors: only 3 bytes, too short"),
    (struct.pack("<Q", 10**9) + b"{}", r"bad\.safetensors: header length 1000000000 is impossible"),
    (struct.pack("<Q", 5) + b"{}", r"bad\.safetensors: header length 5 is impossible"),
    (struct.pack("<Q", 4) + b"{x:1", r"bad\.safetensors: header is not valid JSON"),
    (struct.pack("<Q", 2) + b"\xff\xfe", r"bad\.safetensors: header is not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", r"bad\.safetensors: header is not a JSON object"),
    (_raw_file({"w": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
     r"bad\.safetensors: tensor w has unknown dtype 'Q8'"),
    (_raw_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
     r"bad\.safetensors: tensor w: data_offsets \[0, 4\] span 4 bytes but F32 \[2\] needs 8"),
    (_raw_file({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     r"bad\.safetensors: tensor w has a bad shape"),
    (_raw_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4),
     r"bad\.safetensors: tensor w has bad data_offsets"),
])
def test_bad_headers(tmp_path, content, pattern):
  path = _write(tmp_path, "bad.safetensors", content)
  with pytest.raises(ConversionError, match=pattern) as e:
    sio.read_header(path)
  assert "\n" not in str(e.value)


def test_truncated_file(tmp_path):
  path = str(tmp_path / "t.safetensors")
  sio.write_safetensors(path, {"a": np.zeros(100, np.float32), "b": np.zeros(10, np.float32)})
  full = os.path.getsize(path)
  refs = sio.read_header(path)
  last = max(refs.values(), key=lambda r: r.end)
  with open(path, "r+b") as f:
    f.truncate(full - 3)
  with pytest.raises(ConversionError) as e:
    sio.read_header(path)
  assert str(e.value) == (f"{path}: truncated: tensor {last.name} needs bytes up to {full} but "
                          f"the file has {full - 3}; re-download the shard")
  # A reader that planned before the file shrank gets a clear error too.
  with pytest.raises(ConversionError, match=rf"t\.safetensors: truncated: tensor {last.name}"):
    sio.read_tensor(last)


def test_metadata_is_ignored(tmp_path):
  path = str(tmp_path / "m.safetensors")
  safetensors.numpy.save_file({"w": np.ones(2, np.float32)}, path, metadata={"format": "pt"})
  assert list(sio.read_header(path)) == ["w"]


# ---- list_checkpoint ----

def _sharded(root: str) -> dict[str, np.ndarray]:
  """Two shards plus an index, like a HF repo."""
  t = {"embed": np.arange(6, dtype=np.float32).reshape(2, 3),
       "layers.0.w": np.ones((2, 2), ml_dtypes.bfloat16),
       "layers.1.w": np.zeros((2, 2), ml_dtypes.bfloat16),
       "norm": np.ones((3,), np.float32)}
  sio.write_safetensors(storage.join(root, "model-00001-of-00002.safetensors"),
                        {k: t[k] for k in ("embed", "layers.0.w")})
  sio.write_safetensors(storage.join(root, "model-00002-of-00002.safetensors"),
                        {k: t[k] for k in ("layers.1.w", "norm")})
  weight_map = {"embed": "model-00001-of-00002.safetensors",
                "layers.0.w": "model-00001-of-00002.safetensors",
                "layers.1.w": "model-00002-of-00002.safetensors",
                "norm": "model-00002-of-00002.safetensors"}
  storage.write_text(storage.join(root, sio.INDEX_FILE),
                     json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
  return t


def test_list_checkpoint_with_index(root):
  tensors = _sharded(root)
  refs = sio.list_checkpoint(root)
  assert refs.keys() == tensors.keys()
  assert refs["norm"].file == storage.join(root, "model-00002-of-00002.safetensors")
  for name, arr in tensors.items():
    assert _same(sio.read_tensor(refs[name]), arr), name
  # The index wins over stray files the index does not mention.
  sio.write_safetensors(storage.join(root, "consolidated.safetensors"),
                        {"other": np.ones(1, np.float32)})
  assert sio.list_checkpoint(root).keys() == tensors.keys()


def test_list_checkpoint_without_index(root):
  tensors = _sharded(root)
  storage.remove_tree(storage.join(root, sio.INDEX_FILE))
  storage.write_text(storage.join(root, "config.json"), "{}")
  refs = sio.list_checkpoint(root)
  assert refs.keys() == tensors.keys()


def test_index_lists_missing_shard(root):
  _sharded(root)
  storage.remove_tree(storage.join(root, "model-00002-of-00002.safetensors"))
  with pytest.raises(ConversionError,
                     match=r"model\.safetensors\.index\.json: lists shard model-00002-of-00002"):
    sio.list_checkpoint(root)


def test_index_tensor_missing_from_shard(tmp_path):
  root = str(tmp_path)
  _sharded(root)
  index = storage.join(root, sio.INDEX_FILE)
  doc = json.loads(storage.read_text(index))
  doc["weight_map"]["lm_head"] = "model-00001-of-00002.safetensors"
  storage.write_text(index, json.dumps(doc))
  with pytest.raises(ConversionError, match=r"index\.json: tensor lm_head is mapped to "
                                            r"model-00001-of-00002\.safetensors, but"):
    sio.list_checkpoint(root)


def test_index_not_json(tmp_path):
  _write(tmp_path, sio.INDEX_FILE, b"{nope")
  with pytest.raises(ConversionError, match=r"index\.json: not valid JSON"):
    sio.list_checkpoint(str(tmp_path))


def test_no_safetensors_files(tmp_path):
  _write(tmp_path, "config.json", b"{}")
  with pytest.raises(ConversionError) as e:
    sio.list_checkpoint(str(tmp_path))
  assert str(e.value) == f"{tmp_path}: no *.safetensors files and no model.safetensors.index.json"


def test_tensor_in_two_shards(tmp_path):
  sio.write_safetensors(str(tmp_path / "a.safetensors"), {"w": np.ones(1, np.float32)})
  sio.write_safetensors(str(tmp_path / "b.safetensors"), {"w": np.ones(1, np.float32)})
  with pytest.raises(ConversionError, match=r"tensor w is in two shards: .*a\.safetensors and "
                                            r".*b\.safetensors"):
    sio.list_checkpoint(str(tmp_path))


# ---- the streaming writer ----

_ENTRIES = [("a", "F32", (2, 3)), ("b", "BF16", (4,))]


def test_writer_refuses_out_of_order_and_wrong_arrays(tmp_path):
  path = str(tmp_path / "w.safetensors")
  w = sio.SafetensorsWriter(path, _ENTRIES)
  with pytest.raises(ConversionError, match="tensor b written out of order; expected a"):
    w.write("b", np.zeros(4, ml_dtypes.bfloat16))
  with pytest.raises(ConversionError, match=r"tensor a is float32 \[3, 2\], expected F32 \[2, 3\]"):
    w.write("a", np.zeros((3, 2), np.float32))
  with pytest.raises(ConversionError, match=r"tensor a is float64 \[2, 3\], expected F32"):
    w.write("a", np.zeros((2, 3), np.float64))
  w.write("a", np.zeros((2, 3), np.float32))
  w.write("b", np.zeros(4, ml_dtypes.bfloat16))
  with pytest.raises(ConversionError, match="all tensors are written"):
    w.write("c", np.zeros(1, np.float32))
  w.close()
  assert os.listdir(tmp_path) == ["w.safetensors"]
  assert list(sio.read_header(path)) == ["a", "b"]


def test_writer_accepts_non_contiguous_views(tmp_path):
  path = str(tmp_path / "t.safetensors")
  base = np.arange(6, dtype=np.float32).reshape(3, 2)
  with sio.SafetensorsWriter(path, [("t", "F32", (2, 3))]) as w:
    w.write("t", base.T)
  np.testing.assert_array_equal(sio.read_tensor(sio.read_header(path)["t"]), base.T)


def test_writer_leaves_nothing_when_not_finished(tmp_path):
  path = str(tmp_path / "w.safetensors")
  w = sio.SafetensorsWriter(path, _ENTRIES)
  w.write("a", np.zeros((2, 3), np.float32))
  with pytest.raises(ConversionError, match=r"closed after 1 of 2 tensors \(next was b\)"):
    w.close()
  assert os.listdir(tmp_path) == []

  with pytest.raises(RuntimeError):
    with sio.SafetensorsWriter(path, _ENTRIES) as w:
      w.write("a", np.zeros((2, 3), np.float32))
      raise RuntimeError("worker died")
  assert os.listdir(tmp_path) == []

  w = sio.SafetensorsWriter(path, _ENTRIES)  # Never closed: only the .tmp exists.
  w.write("a", np.zeros((2, 3), np.float32))
  del w
  [leftover] = os.listdir(tmp_path)
  assert leftover.startswith("w.safetensors.") and leftover.endswith(".tmp")


def test_gcs_writer_leaves_nothing_when_not_finished(gcs_bucket):
  path = f"gs://{gcs_bucket}/w.safetensors"
  big = [("a", "F32", (300_000,)), ("b", "BF16", (4,))]  # Past one upload block.
  with pytest.raises(RuntimeError):
    with sio.SafetensorsWriter(path, big) as w:
      w.write("a", np.zeros(300_000, np.float32))
      raise RuntimeError("worker died")
  w = sio.SafetensorsWriter(path, big)  # Dropped without close: never committed.
  w.write("a", np.zeros(300_000, np.float32))
  w._file.close()  # What gcsfs's finalizer would do.  pylint: disable=protected-access
  del w
  assert storage.list_names(f"gs://{gcs_bucket}") == []
