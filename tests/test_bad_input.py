"""Bad input gets one clear error and never a valid-looking output (issue 5's first protections)."""
import json
import os
import shutil
import struct

import pytest

from transforms.errors import ConversionError
from pipeline.planner import plan_to_maxtext
from tests import goldens
from tests.test_to_huggingface import to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms.safetensors_io import read_header


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path):
  shutil.copy(goldens.path("qwen3", "hf", "config.json"), tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")
  with pytest.raises(ConversionError, match=r"only PyTorch pickle files \(pytorch_model.bin\); ckptflow never "
                                            r"unpickles"):
    plan_to_maxtext(str(tmp_path))


def test_overlapping_tensors_in_a_header_are_refused(tmp_path):
  header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
  raw = json.dumps(header).encode()
  path = tmp_path / "x.safetensors"
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(24))
  with pytest.raises(ConversionError, match=r"x.safetensors: tensors a and b overlap"):
    read_header(str(path))


def test_an_uncommitted_maxtext_checkpoint_is_refused(tmp_path):
  shutil.copytree(goldens.path("qwen3", "maxtext_scan"), tmp_path / "ckpt")
  for root, dirs, _ in os.walk(tmp_path / "ckpt"):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o755)
  os.chmod(tmp_path / "ckpt", 0o755)
  os.remove(tmp_path / "ckpt" / "0" / "commit_success.txt")
  os.remove(tmp_path / "ckpt" / "0" / "items" / "commit_success.txt")
  with pytest.raises(ConversionError, match="no commit_success.txt: the checkpoint was never committed"):
    to_hf(tmp_path / "ckpt" / "0" / "items", tmp_path / "out", hf_model_path=goldens.path("qwen3", "hf"))


def test_a_missing_chunk_is_an_error_not_zeros(tmp_path):
  _, items, _ = to_maxtext(goldens.path("qwen3", "hf"), tmp_path / "mt", "--checkpoint_storage_use_ocdbt=false")
  chunks = os.path.join(items, "params.params.decoder.layers.mlp.wo.kernel", "c")
  victim = sorted(os.path.join(r, f) for r, _, fs in os.walk(chunks) for f in fs)[3]
  os.remove(victim)
  with pytest.raises(Exception, match=r"cannot read params/params/decoder/layers/mlp/wo/kernel .*incomplete or "
                                      r"damaged"):
    to_hf(items, tmp_path / "out", hf_model_path=goldens.path("qwen3", "hf"))
  assert not (tmp_path / "out" / "config.json").exists()


def test_an_unwritable_output_fails_before_any_work(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  (locked / "0").write_text("a file where the step directory should go")
  with pytest.raises(ConversionError, match=r"already holds an incomplete checkpoint"):
    to_maxtext(goldens.path("qwen3", "hf"), locked)
  with pytest.raises(ConversionError, match=r"/dev/null/out: not writable"):
    to_maxtext(goldens.path("qwen3", "hf"), "/dev/null/out")
  with pytest.raises(ConversionError, match=r"/dev/null/hf: not writable"):
    to_hf(goldens.items("qwen3", "scan"), "/dev/null/hf", hf_model_path=goldens.path("qwen3", "hf"))


def test_tensor_names_never_choose_where_we_write(tmp_path):
  from transforms.safetensors_io import read_tensor, write_safetensors  # pylint: disable=import-outside-toplevel
  hf = goldens.copy_hf("qwen3", str(tmp_path / "hf"))
  shard = os.path.join(hf, "model.safetensors")
  tensors = {n: read_tensor(r) for n, r in read_header(shard).items()}
  tensors["../../escaped"] = tensors["model.norm.weight"]
  write_safetensors(shard, tensors)
  plan, items, _ = to_maxtext(hf, tmp_path / "out" / "mt")
  assert plan.unused == ("../../escaped",)
  to_hf(items, tmp_path / "out" / "hf", hf_model_path=hf)
  written = {os.path.relpath(os.path.join(r, f), tmp_path) for r, _, fs in os.walk(tmp_path) for f in fs}
  assert all(w.startswith(("hf/", "out/")) for w in written), sorted(written)[:5]
  assert not any("escaped" in w for w in written)
