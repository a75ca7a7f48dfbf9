"""bench/make_model.py's DeepSeek-V4-Flash and Kimi-K2 presets: their tensor lists (bench/release_models.py)
are what the goldens of the same formats hold, for the goldens' configs, and add up to the released models."""
import importlib.util
import json
import math
import os
import subprocess
import sys

from pipeline.planner import plan_to_maxtext
from tests import goldens
from transforms.safetensors_io import list_checkpoint

BENCH = os.path.join(goldens.REPO, "bench")


def _module(name):
  sys.path.insert(0, BENCH)  # make_model imports release_models as a sibling script
  try:
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(BENCH)


def _listed(model_dir):
  return {n: (r.dtype, tuple(r.shape)) for n, r in list_checkpoint(model_dir).items()}


def _config(model_dir):
  with open(os.path.join(model_dir, "config.json")) as f:
    return json.load(f)


def test_v4_tensor_list_is_the_goldens_in_both_formats():
  release = _module("release_models")
  for folder, quantized in (("deepseek4-fp4/hf", True), ("deepseek4-fp4/hf_bf16", False),
                            ("deepseek4/hf_native", False)):
    d = os.path.join(goldens.GOLDENS_NEWER, folder)
    assert {n: (t, tuple(s)) for n, t, s in release.deepseek4_hub(_config(d), quantized)} == _listed(d), folder


def test_kimi_tensor_list_is_the_golden():
  make_model, release = _module("make_model"), _module("release_models")
  d = os.path.join(goldens.GOLDENS_NEWER, "kimi-k2-int4", "hf")
  config = {**_config(d), "num_nextn_predict_layers": 0}  # the golden, like the release, has no MTP layer
  assert {n: (t, tuple(s)) for n, t, s in release.int4_experts(make_model.deepseek(config).items())} == _listed(d)


def test_released_sizes():
  """V4-Flash: 284.3B parameters without its 6.6B MTP layer (the '284B' of its name), 159.6 GB as
  released; Kimi-K2-Thinking (int4 experts): 594.2 GB."""
  make_model, release = _module("make_model"), _module("release_models")
  bf16 = release.deepseek4_hub(make_model.PRESETS["deepseek4-284b"], quantized=False)
  params = sum(math.prod(s) for n, _, s in bf16 if not n.startswith("mtp."))
  assert round(params / 1e9, 1) == 284.3
  itemsize = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I32": 4, "I64": 8}
  v4 = release.deepseek4_hub(make_model.PRESETS["deepseek4-284b"])
  assert sum(math.prod(s) * itemsize[t] for _, t, s in v4) == 159_609_485_896
  kimi = release.int4_experts(make_model.deepseek(make_model.PRESETS["kimi-k2-1t"]).items())
  assert round(sum(math.prod(s) * itemsize[t] for _, t, s in kimi) / 1e9, 1) == 594.2


def test_a_v4_slice_plans_from_headers_with_its_mtp_layer_unused(tmp_path):
  subprocess.run([sys.executable, goldens.MAKE_MODEL, "--preset", "deepseek4-284b", "--layers", "5", "--experts", "4",
                  "--sparse", "--out", str(tmp_path)], check=True, capture_output=True)
  plan = plan_to_maxtext(str(tmp_path))
  assert plan.unused and all(n.startswith("mtp.0.") for n in plan.unused)
  shapes = {a.path.removeprefix("params/params/"): a.shape for a in plan.arrays}
  assert shapes["decoder/scanned_blocks/layers_1/self_attention/wq_b/kernel"] == (1024, 1, 64, 512)
  assert shapes["decoder/layers_0/mlp/MoeBlock_0/wi_0"] == (4, 4096, 2048)
  with open(tmp_path / "model.safetensors.index.json") as f:
    total = json.load(f)["metadata"]["total_size"]
  unused = sum(r.nbytes for n, r in list_checkpoint(str(tmp_path)).items() if n.startswith("mtp."))
  distinct = {s.name: s.nbytes for t in plan.tasks for s in t.sources}  # hc fn/base/scale: read once per segment
  assert sum(distinct.values()) == total - unused
