"""transforms.storage on local paths and on gs:// through the emulator."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts

from transforms.errors import ConversionError
from tests import gcs_emulator
from transforms import storage


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path) -> str:
  """A fresh empty directory: a tmp dir, or a bucket prefix in the emulator."""
  if request.param == "local":
    return str(tmp_path / "root")
  return f"gs://{request.getfixturevalue('gcs_bucket')}/root"


def test_is_gcs():
  assert storage.is_gcs("gs://b/x")
  assert not storage.is_gcs("/tmp/x")
  assert not storage.is_gcs("relative/gs://x")


@pytest.mark.parametrize("base,parts,want", [
    ("gs://b", ("x",), "gs://b/x"),
    ("gs://b/", ("x/", "/y"), "gs://b/x/y"),
    ("gs://b/dir/", ("a/b.json",), "gs://b/dir/a/b.json"),
    ("/tmp/d", ("x", "y.bin"), "/tmp/d/x/y.bin"),
    ("/tmp/d/", ("/abs",), "/tmp/d/abs"),
    ("/", ("x",), "/x"),
    ("rel", ("x",), "rel/x"),
    ("gs://b/x", (), "gs://b/x"),
])
def test_join(base, parts, want):
  assert storage.join(base, *parts) == want


def test_filesystem_is_cached_per_protocol(tmp_path):
  assert storage.filesystem(str(tmp_path)) is storage.filesystem("/elsewhere")
  assert storage.filesystem(str(tmp_path)).protocol[0] == "file"


def test_gcs_filesystem_is_cached(gcs_bucket):
  assert storage.filesystem(f"gs://{gcs_bucket}/a") is storage.filesystem("gs://other/b")


def test_round_trip(root):
  path = storage.join(root, "sub", "dir", "data.bin")
  data = bytes(range(256)) * 4
  assert not storage.exists(path)
  storage.write_bytes(path, data)  # Creates the parents.
  assert storage.exists(path)
  assert storage.size(path) == 1024
  assert storage.read_bytes(path) == data
  assert storage.read_bytes(path, 10, 20) == data[10:20]
  assert storage.read_bytes(path, 1000) == data[1000:]
  assert storage.read_bytes(path, 1000, 2000) == data[1000:]  # Short, not an error.
  assert storage.read_bytes(path, 5000, 5008) == b""
  assert storage.read_bytes(path, 7, 7) == b""
  storage.write_bytes(path, b"replaced")
  assert storage.read_bytes(path) == b"replaced"

  storage.write_text(storage.join(root, "sub", "note.json"), '{"a": "é"}')
  assert storage.read_text(storage.join(root, "sub", "note.json")) == '{"a": "é"}'
  assert storage.list_names(storage.join(root, "sub")) == ["dir", "note.json"]
  assert storage.list_names(storage.join(root, "sub") + "/") == ["dir", "note.json"]
  assert storage.list_names(path) == []
  assert storage.list_names(storage.join(root, "missing")) == []

  storage.remove_tree(storage.join(root, "sub", "dir"))
  assert not storage.exists(path)
  assert storage.list_names(storage.join(root, "sub")) == ["note.json"]
  storage.remove_tree(storage.join(root, "sub", "dir"))  # Missing is fine.
  storage.remove_tree(storage.join(root, "sub", "note.json"))  # So is a single file.
  assert storage.list_names(storage.join(root, "sub")) == []


def test_missing_file_errors_name_the_path(root):
  path = storage.join(root, "nope.bin")
  for call in (storage.read_bytes, storage.size, storage.read_text):
    with pytest.raises(ConversionError, match=r"nope\.bin: no such file"):
      call(path)
  with pytest.raises(ConversionError, match=r"nope\.bin: no such file"):
    storage.read_bytes(path, 0, 8)


def test_local_write_leaves_no_temp_files(tmp_path):
  storage.write_bytes(str(tmp_path / "a.bin"), b"x")
  storage.write_bytes(str(tmp_path / "a.bin"), b"y")
  assert os.listdir(tmp_path) == ["a.bin"]


def test_remove_tree_refuses_roots(gcs_bucket):
  with pytest.raises(ConversionError, match="whole bucket"):
    storage.remove_tree(f"gs://{gcs_bucket}/")
  with pytest.raises(ConversionError, match="root"):
    storage.remove_tree("/")


def test_kvstore_spec_forms(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.kvstore_spec("rel/dir") == {"driver": "file", "path": f"{tmp_path}/rel/dir/"}
  assert storage.kvstore_spec(f"{tmp_path}/d/") == {"driver": "file", "path": f"{tmp_path}/d/"}
  assert storage.kvstore_spec("gs://b/x/y") == {"driver": "gcs", "bucket": "b", "path": "x/y/"}
  assert storage.kvstore_spec("gs://b/x/") == {"driver": "gcs", "bucket": "b", "path": "x/"}
  assert storage.kvstore_spec("gs://b") == {"driver": "gcs", "bucket": "b", "path": ""}


def test_kvstore_spec_plain_kvstore(root):
  """Keys land under the directory (the trailing "/" matters for a plain kvstore)."""
  kv = ts.KvStore.open(storage.kvstore_spec(storage.join(root, "kv"))).result()
  kv.write("a/b", b"hello").result()
  assert storage.read_bytes(storage.join(root, "kv", "a", "b")) == b"hello"


def test_tensorstore_ocdbt_zarr3_round_trip(root):
  """kvstore_spec works as an OCDBT base on both local disk and gs:// (the emulator)."""
  base = storage.join(root, "ckpt", "items")
  spec = {
      "driver": "zarr3",
      "kvstore": {"driver": "ocdbt", "base": storage.kvstore_spec(base), "path": "a.b/"},
      "metadata": {"shape": [4, 6], "data_type": "bfloat16",
                   "chunk_grid": {"name": "regular",
                                  "configuration": {"chunk_shape": [2, 6]}}},
      "create": True,
  }
  arr = ts.open(spec).result()
  values = np.arange(24, dtype=np.float32).reshape(4, 6).astype(arr.dtype.numpy_dtype)
  arr.write(values).result()
  del spec["metadata"], spec["create"]
  back = ts.open(spec, open=True).result().read().result()
  np.testing.assert_array_equal(back, values)
  assert "manifest.ocdbt" in storage.list_names(base)


def test_upload_download_dir(tmp_path, gcs_bucket):
  src = tmp_path / "src"
  (src / "a" / "b").mkdir(parents=True)
  (src / "top.txt").write_bytes(b"top")
  (src / "a" / "b" / "deep.bin").write_bytes(b"\x00\x01")
  gcs_emulator.upload_dir(str(src), f"gs://{gcs_bucket}/up")
  assert storage.list_names(f"gs://{gcs_bucket}/up") == ["a", "top.txt"]
  gcs_emulator.download_dir(f"gs://{gcs_bucket}/up", str(tmp_path / "dst"))
  assert (tmp_path / "dst" / "top.txt").read_bytes() == b"top"
  assert (tmp_path / "dst" / "a" / "b" / "deep.bin").read_bytes() == b"\x00\x01"


def test_emulator_env_is_set_for_subprocesses(gcs_server):
  assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_server.url
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == gcs_server.url
  assert os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] == "x"
  assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"


def test_subprocess_reaches_the_emulator(gcs_bucket):
  """Beam's multi-process workers inherit os.environ; so does any child process."""
  path = f"gs://{gcs_bucket}/from_child.txt"
  code = f"from transforms import storage; storage.write_text({path!r}, 'hi from child')"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
  assert storage.read_text(path) == "hi from child"
