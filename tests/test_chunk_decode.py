"""Decoding stored chunks ourselves gives, bit for bit, what tensorstore reads; damage is one line."""
import glob
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts

from tests import goldens
from transforms import chunk_decode, ocdbt_index, orbax_layout
from transforms.errors import ConversionError
from transforms.orbax_reader import CheckpointReader


def regions(shape):
  """The whole array, each axis fixed at its middle, and a window cut on the next axis."""
  rank = len(shape)
  yield orbax_layout.region(rank, ())
  for axis in range(rank):
    yield orbax_layout.region(rank, ((axis, shape[axis] // 2),))
    other = (axis + 1) % rank
    if rank > 1 and shape[other] > 2:
      yield orbax_layout.region(rank, ((axis, 0),), (other, 1, shape[other] - 1))


def assert_reads_like_tensorstore(items):
  reader = CheckpointReader(items)
  decoded = 0
  for path in reader.paths:
    try:
      store = reader.array(path)
    except ConversionError:  # a leaf that is no array (an empty opt_state)
      continue
    for expr in regions(store.shape):
      want = np.asarray(store[expr].read().result() if expr else store.read().result())
      got = reader.result(reader.read_region(path, expr), path)
      assert got.dtype == want.dtype and got.shape == want.shape, (path, expr)
      assert got.tobytes() == want.tobytes(), (path, expr)
    decoded += reader._decoders[path] is not None  # pylint: disable=protected-access
  return decoded


@pytest.mark.parametrize("family", ["llama3.1", "qwen3-moe", "deepseek3", "gemma3-mm"])
@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_maxtexts_own_checkpoints_decode_like_tensorstore(family, layout):
  assert assert_reads_like_tensorstore(goldens.items(family, layout)) > 5


def test_a_training_state_decodes_like_tensorstore():
  """NNX TrainStates hold 0-d counters, int and float leaves besides the parameters."""
  (items,) = glob.glob(os.path.join(goldens.GOLDENS_TRAIN, "llama3.1-train-scan-nnx", "run", "*", "checkpoints",
                                    "2", "items"))
  assert assert_reads_like_tensorstore(items) > 20


def array_kvstore(path, ocdbt):
  return {"driver": "ocdbt", "base": f"file://{path}", "path": "a.b"} if ocdbt else f"file://{path}/a.b/"


def write_array(path, value, codecs, chunks, ocdbt):
  metadata = {"shape": list(value.shape), "data_type": value.dtype.name, "codecs": codecs,
              "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}}}
  spec = {"driver": "zarr3", "kvstore": array_kvstore(path, ocdbt), "metadata": metadata, "create": True}
  ts.open(spec).result().write(value).result()
  store = ts.open({"driver": "zarr3", "kvstore": array_kvstore(path, ocdbt)}).result()
  return chunk_decode.decoder(str(path), "a/b", store.spec().to_json()["metadata"], store.dtype.numpy_dtype, ocdbt)


ZSTD = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 1}}]


def sharded(inner, location="end", checksum=False):
  codecs = [ZSTD[0], {"name": "zstd", "configuration": {"level": 1, "checksum": checksum}}]
  return [{"name": "sharding_indexed", "configuration": {
      "chunk_shape": inner, "codecs": codecs, "index_location": location,
      "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}]


@pytest.mark.parametrize("ocdbt", [True, False], ids=["ocdbt", "files"])
@pytest.mark.parametrize("codecs, chunks", [
    (ZSTD, [3, 2, 5]),  # unsharded, edge chunks on every axis
    (sharded([3, 2, 5]), [3, 2, 5]),  # one frame per shard, MaxText's layout
    (sharded([1, 2, 5], "start", checksum=True), [3, 4, 10]),  # several frames per shard, index first
], ids=["unsharded", "sharded", "frames-index-first"])
def test_every_region_of_an_array_decodes_like_tensorstore(tmp_path, codecs, chunks, ocdbt):
  value = np.random.default_rng(0).standard_normal((7, 5, 11)).astype(ml_dtypes.bfloat16)
  decoder = write_array(tmp_path, value, codecs, chunks, ocdbt)
  assert decoder is not None
  exprs = list(regions(value.shape)) + [(slice(2, 6), 3, slice(4, 11)), (6, slice(None), slice(9, 11)),
                                        (slice(3, 3), slice(None), slice(None))]
  for expr in exprs:
    assert decoder.read(expr).result().tobytes() == value[expr].tobytes(), expr
    assert decoder.read(expr).result().shape == value[expr].shape


def test_encodings_not_decoded_here_are_left_to_tensorstore():
  dtype = np.dtype(np.float32)
  base = {"zarr_format": 3, "shape": [4], "data_type": "float32", "fill_value": 0.0,
          "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
          "chunk_key_encoding": {"name": "default"}}
  assert chunk_decode.layout_of({**base, "codecs": ZSTD}, dtype) is not None
  others = [
      [{"name": "bytes", "configuration": {"endian": "big"}}, ZSTD[1]],
      [ZSTD[0], {"name": "blosc", "configuration": {}}],
      [{"name": "transpose", "configuration": {"order": [0]}}, *ZSTD],
      [ZSTD[0]],
  ]
  for codecs in others:
    assert chunk_decode.layout_of({**base, "codecs": codecs}, dtype) is None, codecs
  assert chunk_decode.layout_of({**base, "codecs": ZSTD, "chunk_key_encoding": {"name": "v2"}}, dtype) is None
  assert chunk_decode.layout_of({**base, "codecs": ZSTD, "zarr_format": 2}, dtype) is None
  assert chunk_decode.decoder("gs://b/items", "a", {**base, "codecs": ZSTD}, dtype, True) is None


def damaged_copy(tmp_path):
  items = str(shutil.copytree(goldens.items("llama3.1", "scan"), tmp_path / "items"))
  for root, _, names in os.walk(items):
    for name in names:
      os.chmod(os.path.join(root, name), 0o644)
  reader = CheckpointReader(items)
  path = "params/params/decoder/layers/mlp/wi_0/kernel"
  key = orbax_layout.chunk_keys(orbax_layout.ArraySpec(path, tuple(reader.array(path).shape), "bfloat16",
                                                       tuple(reader.array(path).chunk_layout.write_chunk.shape)),
                                (), True)[0]
  file, offset, length = ocdbt_index.stored_values(items).values[key.encode()]
  return reader, path, file, offset, length


@pytest.mark.parametrize("where, match", [
    (lambda offset, length: offset + 40, "zstd|decodes to"),  # inside the frame's compressed bytes
    (lambda offset, length: offset + length - 6, "CRC-32C"),  # inside the shard index
])
def test_a_damaged_chunk_is_one_line_naming_it(tmp_path, where, match):
  reader, path, file, offset, length = damaged_copy(tmp_path)
  with open(file, "r+b") as f:
    f.seek(where(offset, length))
    byte = f.read(1)
    f.seek(where(offset, length))
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ConversionError, match=match) as e:
    reader.result(reader.read_slice(path, ((1, 0),)), path)
  message = str(e.value)
  assert "\n" not in message and path in message and "damaged" in message


def test_a_missing_chunk_is_one_line(tmp_path):
  value = np.arange(12, dtype=np.float32).reshape(4, 3)
  decoder = write_array(tmp_path, value, sharded([2, 3]), [2, 3], ocdbt=False)
  os.remove(tmp_path / "a.b" / "c" / "1" / "0")
  assert decoder.read((slice(0, 2), slice(None))).result().tolist() == value[:2].tolist()
  with pytest.raises(ConversionError, match=r"a/b \(chunk a.b/c/1/0\): it is missing") as e:
    decoder.read((slice(None), slice(None))).result()
  assert "\n" not in str(e.value)
