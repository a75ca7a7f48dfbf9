"""Every file a conversion writes gets the permissions the user's umask gives a new file, both ways."""
import contextlib
import os
import stat

import pytest

from tests import goldens
from tests.test_to_huggingface import to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms import files


@contextlib.contextmanager
def umask(mask):
  old = os.umask(mask)
  try:
    yield
  finally:
    os.umask(old)


def modes(root):
  """{relative path: permission bits} of every file and directory under `root`."""
  found = {}
  for base, dirs, names in os.walk(root):
    for name in dirs + names:
      full = os.path.join(base, name)
      found[os.path.relpath(full, root)] = stat.S_IMODE(os.stat(full).st_mode)
  return found


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_both_directions_write_files_as_the_umask_says(tmp_path, mask):
  with umask(mask):
    _, items, _ = to_maxtext(goldens.path("qwen3", "hf"), tmp_path / "mt", "--scan_layers=true")
    _, _, _ = to_maxtext(goldens.path("qwen3", "hf"), tmp_path / "zarr", "--scan_layers=false",
                         "--checkpoint_storage_use_ocdbt=false")
    to_hf(items, tmp_path / "hf", "--max_shard_size=100KB", hf_model_path=goldens.path("qwen3", "hf"))
  found = modes(tmp_path)
  want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
  wrong = {p: oct(m) for p, m in found.items()
           if m != (want_dir if os.path.isdir(tmp_path / p) else want_file)}
  assert not wrong
  # Every kind of file is among them: metadata, markers, manifests, OCDBT and zarr data, shards and index.
  names = {os.path.basename(p) for p in found}
  for name in ("_METADATA", "_CHECKPOINT_METADATA", "commit_success.txt", "ckptflow_manifest.json",
               "manifest.ocdbt", "config.json", "generation_config.json", "tokenizer.json",
               "model.safetensors.index.json", "zarr.json"):
    assert name in names, name
  assert len([n for n in names if n.startswith("model-0000")]) > 1
  assert any(p.startswith(os.path.join("mt", "0", "items", "ocdbt.process_")) and os.sep + "d" + os.sep in p
             for p in found)


def test_new_file_mode_follows_the_umask():
  with umask(0o077):
    assert files.umask() == 0o077 and files.new_file_mode() == 0o600
  with umask(0o002):
    assert files.new_file_mode() == 0o664
