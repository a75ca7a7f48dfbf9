"""MaxText -> HF on MaxText's own checkpoints and on ours: values, layout, sharding, errors."""
import json
import os
import shutil

import ml_dtypes
import google_crc32c
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import to_huggingface_job
from transforms.errors import ConversionError
from pipeline.planner import parse_size
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS
from tests.test_to_maxtext import convert as to_maxtext
from transforms.safetensors_io import list_checkpoint, read_header, read_tensor

# The query is scaled by 1/sqrt(head_dim) on the way in: back in bf16 it may be one rounding off.
RESCALED = {"llama3.1": ("q_proj.weight",), "mixtral": ("q_proj.weight",)}


def to_hf(items, out, *flags, hf_model_path=None, runner_flags=IN_PROCESS):
  args = [f"--load_parameters_path={items}", f"--base_output_directory={out}", "--progress=false",
          *runner_flags, *flags]
  if hf_model_path:
    args.append(f"--hf_model_path={hf_model_path}")
  return to_huggingface_job.convert(PipelineOptions(args), args)


def tensors(model_dir):
  return {name: read_tensor(ref) for name, ref in list_checkpoint(str(model_dir)).items()}


def assert_same_model(ours, theirs, family, ulps_dtype=ml_dtypes.bfloat16):
  assert sorted(ours) == sorted(theirs)
  for name, want in theirs.items():
    got = ours[name]
    assert got.dtype == want.dtype and got.shape == want.shape, name
    if goldens.same_bits(got, want):
      continue
    assert name.endswith(RESCALED.get(family, ())), f"{name} differs"
    eps = float(ml_dtypes.finfo(ulps_dtype).eps)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(diff <= np.abs(want.astype(np.float64)) * eps), f"{name} is more than one rounding off"


@pytest.mark.parametrize("family", goldens.FAMILIES)
@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_maxtext_checkpoints_give_back_the_original_model(tmp_path, family, layout):
  plan, totals = to_hf(goldens.items(family, layout), tmp_path, hf_model_path=goldens.path(family, "hf"))
  assert plan.scan_layers == (layout == "scan")
  assert_same_model(tensors(tmp_path), tensors(goldens.path(family, "hf")), family)
  assert totals["tensors"] == plan.tensor_count
  for name in ("config.json", "tokenizer.json", "generation_config.json"):
    assert (tmp_path / name).exists()
  with open(tmp_path / "config.json") as f, open(goldens.path(family, "hf", "config.json")) as g:
    assert json.load(f) == json.load(g)


@pytest.mark.parametrize("family", goldens.FAMILIES)
def test_transformers_loads_the_result_with_no_missing_keys(tmp_path, family):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  to_hf(goldens.items(family, "unscan"), tmp_path, hf_model_path=goldens.path(family, "hf"))
  model, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  original = transformers.AutoModelForCausalLM.from_pretrained(goldens.path(family, "hf"))
  ids = torch.tensor([[1, 5, 9, 200, 3]])
  with torch.no_grad():
    a, b = model(ids).logits.float(), original(ids).logits.float()
  tolerance = 0.05 if family in RESCALED else 0.0
  assert torch.max(torch.abs(a - b)).item() <= tolerance * torch.max(torch.abs(b)).item()


@pytest.mark.parametrize("layout", ["scan", "unscan"])
@pytest.mark.parametrize("family", goldens.FAMILIES)
def test_round_trip_through_our_own_pipeline(tmp_path, family, layout):
  _, items, _ = to_maxtext(goldens.path(family, "hf"), tmp_path / "mt", f"--scan_layers={layout == 'scan'}")
  to_hf(items, tmp_path / "hf", hf_model_path=goldens.path(family, "hf"))
  assert_same_model(tensors(tmp_path / "hf"), tensors(goldens.path(family, "hf")), family)


def _float32_model(family, dest):
  """The golden model in float32 with every mantissa bit in use (not just bf16's 8)."""
  shutil.copytree(goldens.path(family, "hf"), dest)
  os.chmod(dest, 0o755)
  rng = np.random.default_rng(7)
  wide = {}
  for name, value in tensors(goldens.path(family, "hf")).items():
    x = value.astype(np.float32)
    wide[name] = (x * (1 + rng.uniform(-2**-9, 2**-9, x.shape))).astype(np.float32)
  from transforms.safetensors_io import write_safetensors  # pylint: disable=import-outside-toplevel
  os.chmod(os.path.join(dest, "model.safetensors"), 0o644)
  write_safetensors(os.path.join(dest, "model.safetensors"), wide)
  return wide


@pytest.mark.parametrize("family", ["llama3.1", "qwen3"])
def test_float32_round_trip_rounds_once(tmp_path, family):
  source = _float32_model(family, str(tmp_path / "src"))
  _, items, _ = to_maxtext(tmp_path / "src", tmp_path / "mt", "--save_dtype=float32")
  to_hf(items, tmp_path / "hf", "--weight_dtype=float32", hf_model_path=tmp_path / "src")
  back = tensors(tmp_path / "hf")
  assert all(v.dtype == np.float32 for v in back.values())
  assert_same_model(back, source, family, ulps_dtype=np.float32)
  if family == "llama3.1":  # the rescaled query really went through float32 both ways
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not goldens.same_bits(back[q].astype(ml_dtypes.bfloat16).astype(np.float32), back[q])


def test_shards_match_what_transformers_saves(tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  config = transformers.AutoConfig.from_pretrained(goldens.path("qwen3", "hf"))
  config.num_hidden_layers, config.tie_word_embeddings = 12, False
  config.layer_types = ["full_attention"] * 12
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
  theirs = tmp_path / "theirs"
  model.save_pretrained(str(theirs), max_shard_size="100KB")
  _, items, _ = to_maxtext(theirs, tmp_path / "mt")
  to_hf(items, tmp_path / "ours", "--max_shard_size=100KB", hf_model_path=theirs)
  shard_names = sorted(n for n in os.listdir(theirs) if n.endswith(".safetensors"))
  assert len(shard_names) > 5
  assert sorted(n for n in os.listdir(tmp_path / "ours") if n.endswith(".safetensors")) == shard_names
  for name in shard_names:
    a, b = read_header(str(tmp_path / "ours" / name)), read_header(str(theirs / name))
    assert list(a) == list(b) and all(a[k].start == b[k].start for k in a), name
    with open(tmp_path / "ours" / name, "rb") as f, open(theirs / name, "rb") as g:
      assert f.read() == g.read(), f"{name} is not byte-identical"
  with open(tmp_path / "ours" / "model.safetensors.index.json") as f, open(theirs / "model.safetensors.index.json") as g:
    assert f.read() == g.read()


def test_layout_comes_from_the_checkpoint_and_a_contradiction_is_one_line(tmp_path):
  with pytest.raises(ConversionError, match=r"holds scanned layers \(scan_layers=true\); drop scan_layers= or set "
                                            r"it to true"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path / "a", "--scan_layers=false",
          hf_model_path=goldens.path("qwen3", "hf"))
  copy = tmp_path / "ckpt"
  shutil.copytree(goldens.path("qwen3", "maxtext_unscan"), copy)
  os.chmod(copy / "0", 0o755)
  os.remove(copy / "0" / "_CHECKPOINT_METADATA")  # older checkpoints: the tree tells
  plan, _ = to_hf(copy / "0" / "items", tmp_path / "b", hf_model_path=goldens.path("qwen3", "hf"))
  assert plan.scan_layers is False


def test_wrong_model_errors(tmp_path):
  with pytest.raises(ConversionError, match=r"array params/params/token_embedder/embedding has shape \[512, 64\] "
                                            r"but the built-in config of qwen3-0.6b implies \[151936, 1024\]"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path / "a", "--model_name=qwen3-0.6b")
  with pytest.raises(ConversionError, match=r"array params/params/decoder/layers/self_attention/query/kernel has "
                                            r"shape \[64, 3, 4, 32\] but .*qwen2.5/hf/config.json implies"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path / "b", hf_model_path=goldens.path("qwen2.5", "hf"))
  with pytest.raises(ConversionError, match="no array params/params/decoder/logits_dense/kernel, which a llama3.1"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path / "d", hf_model_path=goldens.path("llama3.1", "hf"))
  with pytest.raises(ConversionError, match="no _METADATA"):  # (a step directory means its items)
    to_hf(goldens.path("qwen3", "hf"), tmp_path / "c", hf_model_path=goldens.path("qwen3", "hf"))


def test_existing_model_is_refused_unless_overwrite(tmp_path):
  args = (goldens.items("qwen3", "scan"), tmp_path)
  to_hf(*args, hf_model_path=goldens.path("qwen3", "hf"))
  with pytest.raises(ConversionError, match="already holds a model"):
    to_hf(*args, hf_model_path=goldens.path("qwen3", "hf"))
  to_hf(*args, "--overwrite", hf_model_path=goldens.path("qwen3", "hf"))


def test_parse_size_reads_sizes_as_transformers_does():
  assert parse_size("5GB") == 5 * 10**9 and parse_size("100KB") == 100_000 and parse_size("2GiB") == 2 * 2**30
  with pytest.raises(ConversionError, match="--max_shard_size=lots"):
    parse_size("lots")


def test_a_shard_written_twice_has_the_same_bytes(tmp_path):
  to_hf(goldens.items("qwen3", "scan"), tmp_path / "a", "--max_shard_size=100KB", hf_model_path=goldens.path("qwen3", "hf"))
  to_hf(goldens.items("qwen3", "scan"), tmp_path / "b", "--max_shard_size=100KB", hf_model_path=goldens.path("qwen3", "hf"))
  names = sorted(os.listdir(tmp_path / "a"))
  assert names == sorted(os.listdir(tmp_path / "b")) and len([n for n in names if n.endswith(".safetensors")]) > 1
  for name in names:
    if name != "ckptflow_manifest.json":  # records when each run was made
      assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_resume_writes_only_the_missing_shards(tmp_path, monkeypatch):
  from transforms import shard_dofns  # pylint: disable=import-outside-toplevel
  real = shard_dofns.hf_blocks

  def failing(reader, tasks, param_of, sizes):
    for item in real(reader, tasks, param_of, sizes):
      if item[0].name == "model.layers.2.mlp.up_proj.weight":
        raise OSError("preempted")
      yield item
  monkeypatch.setattr(shard_dofns, "hf_blocks", failing)
  with pytest.raises(Exception, match="preempted"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path, "--max_shard_size=100KB", hf_model_path=goldens.path("qwen3", "hf"))
  assert not (tmp_path / "config.json").exists()
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
  monkeypatch.setattr(shard_dofns, "hf_blocks", real)
  with pytest.raises(ConversionError, match="or --resume to finish it"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path, "--max_shard_size=100KB", hf_model_path=goldens.path("qwen3", "hf"))
  plan, totals = to_hf(goldens.items("qwen3", "scan"), tmp_path, "--max_shard_size=100KB", "--resume",
                       hf_model_path=goldens.path("qwen3", "hf"))
  assert 0 < totals["tensors"] < plan.tensor_count
  to_hf(goldens.items("qwen3", "scan"), tmp_path / "clean", "--max_shard_size=100KB",
        hf_model_path=goldens.path("qwen3", "hf"))
  for name in os.listdir(tmp_path / "clean"):
    if name != "ckptflow_manifest.json":  # records the run (--resume, time)
      assert (tmp_path / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_manifest_records_the_checkpoint_and_every_tensor_written(tmp_path):
  import zlib  # pylint: disable=import-outside-toplevel
  items = goldens.items("qwen3", "scan")
  to_hf(items, tmp_path, "--max_shard_size=40KB", hf_model_path=goldens.path("qwen3", "hf"),
        runner_flags=(*IN_PROCESS, "--hf_access_token=hf_secret_token"))
  with open(tmp_path / "ckptflow_manifest.json") as f:
    manifest = json.load(f)
  assert manifest["direction"] == "to_huggingface" and manifest["family"] == "qwen3"
  assert manifest["options"]["load_parameters_path"] == items and manifest["options"]["scan_layers"] is None
  metadata = os.path.join(items, "_METADATA")
  assert manifest["sources"][metadata] == {"size": os.path.getsize(metadata),
                                           "mtime_ns": os.stat(metadata).st_mtime_ns}
  assert os.path.join(items, "commit_success.txt") in manifest["sources"]
  written = tensors(tmp_path)
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  assert sorted(manifest["tensors"]) == sorted(written)
  for name, value in written.items():
    assert manifest["tensors"][name]["crc32c"] == google_crc32c.value(value.tobytes()), name
  assert "hf_secret_token" not in (tmp_path / "ckptflow_manifest.json").read_text()
