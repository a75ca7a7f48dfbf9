"""DeepSeek V2 / V3 / V3.2 (MLA, dense + MoE layer stacks, shared experts, routing bias, indexer)
against MaxText's goldens in both directions and layouts, plus the cases the goldens leave out."""
import json
import os

import numpy as np
import pytest

import models
from pipeline import check_logits
from pipeline.planner import detect_family, family_of_model_name, plan_to_maxtext
from tests import goldens
from tests.test_to_huggingface import assert_same_model, tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms.safetensors_io import write_safetensors

FAMILIES = ("deepseek2", "deepseek3", "deepseek3.2")
LAYOUTS = ("scan", "unscan")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_planned_tree_equals_maxtext_tree(family, layout):
  plan = plan_to_maxtext(goldens.path(family, "hf"), scan_layers=layout == "scan")
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  assert ours == {k: v for k, v in goldens.tree(family, layout).items() if k != "step"}
  assert plan.family == family and plan.unused == ()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_to_maxtext_is_bit_identical_and_back_gives_the_hf_model(tmp_path, family, layout):
  _, items, _ = to_maxtext(goldens.path(family, "hf"), tmp_path / "mt", f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items(family, layout)))
  # From MaxText's own checkpoint (MaxText itself has no MaxText -> HF for V3.2).
  plan, _ = to_hf(goldens.items(family, layout), tmp_path / "hf", hf_model_path=goldens.path(family, "hf"))
  assert plan.scan_layers == (layout == "scan")
  assert_same_model(tensors(tmp_path / "hf"), tensors(goldens.path(family, "hf")), family)


@pytest.mark.parametrize("family", FAMILIES)
def test_detected_from_config_and_model_name(family):
  with open(goldens.path(family, "hf", "config.json")) as f:
    config = json.load(f)
  with open(goldens.path(family, "maxtext_model.json")) as f:
    model_name = json.load(f)["mt_model_name"]
  assert detect_family(config).name == family
  assert family_of_model_name(model_name).name == family
  assert detect_family(config, model_name).name == family


def test_mtp_layer_and_extra_tensors_are_reported_unused(tmp_path):
  """V3's multi-token-prediction layer (model.layers.<num_hidden_layers>) is not in MaxText's model."""
  src = goldens.copy_hf("deepseek3", str(tmp_path / "hf"))
  weights = tensors(src)
  mtp = {"model.layers.3.enorm.weight": np.ones(64, np.float32),
         "model.layers.3.eh_proj.weight": np.zeros((64, 128), np.float32),
         "model.layers.3.self_attn.kv_a_layernorm.weight": np.ones(24, np.float32)}
  write_safetensors(os.path.join(src, "model.safetensors"), {**weights, **mtp})
  plan = plan_to_maxtext(src)
  assert plan.unused == tuple(sorted(mtp))
  assert len(plan.tasks) == len(weights)


def _tiny_v2_with_q_lora(dest):
  """DeepSeek-V2 (full, not Lite) uses a low-rank query: the goldens' V2 has q_lora_rank null."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  with open(goldens.path("deepseek2", "hf", "config.json")) as f:
    config = json.load(f)
  config.update(q_lora_rank=40, dtype="float32", num_hidden_layers=4, first_k_dense_replace=2)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(transformers.DeepseekV2Config(**config),
                                                        dtype=torch.float32)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.5)
  model.save_pretrained(dest)
  return dest


def test_v2_with_q_lora_round_trips_exactly_in_float32(tmp_path, capsys):
  src = _tiny_v2_with_q_lora(str(tmp_path / "src"))
  plan, items, _ = to_maxtext(src, tmp_path / "mt", "--save_dtype=float32", "--scan_layers=false")
  paths = {a.path.removeprefix("params/params/decoder/") for a in plan.arrays}
  assert {"dense_layers_1/self_attention/wq_a/kernel", "moe_layers_1/self_attention/wq_b/kernel",
          "moe_layers_1/self_attention/q_norm/scale"} <= paths
  assert not any("query" in p or "gate/bias" in p or "dense_layers_2" in p for p in paths)
  to_hf(items, tmp_path / "hf", "--weight_dtype=float32", hf_model_path=src)
  back, original = tensors(tmp_path / "hf"), tensors(src)
  assert sorted(back) == sorted(original)
  assert all(goldens.same_bits(back[k], original[k]) for k in original)
  assert check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={src}",
                            "--backend=ckptflow", "--prompt=one two three four"]) == 0
  assert "PASS: max per-token KL" in capsys.readouterr().out


def test_v32_check_logits_passes_on_maxtexts_own_checkpoint(capsys):
  """The converted-back V3.2 model (indexer included) predicts what the HF model predicts."""
  assert check_logits.main([f"load_parameters_path={goldens.items('deepseek3.2', 'scan')}",
                            f"--hf_model_path={goldens.path('deepseek3.2', 'hf')}", "--backend=ckptflow"]) == 0
  out = capsys.readouterr().out
  assert out.count("top-10 overlap 10/10") == 4 and "PASS: max per-token KL" in out


def test_families_are_registered_with_distinct_architectures():
  assert {models.BY_ARCHITECTURE[a].name for a in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM",
                                                   "DeepseekV32ForCausalLM")} == set(FAMILIES)
