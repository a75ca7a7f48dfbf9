"""Qwen3-VL (dense, tied) and Qwen3-VL-MoE (fused Hub-layout experts) against MaxText's goldens,
text-only and with the vision tower; the way back MaxText lacks for the MoE; scan refused."""
import json

import numpy as np
import pytest

from pipeline.planner import detect_family, family_of_model_name, plan_to_maxtext, read_config
from tests import qwen_checks as qc
from tests.test_to_huggingface import tensors
from transforms.errors import ConversionError

CASES = qc.cases("qwen3-vl", "qwen3-vl-moe")


@pytest.mark.parametrize("golden,layout", CASES)
def test_planned_tree_equals_maxtext_tree(golden, layout):
  qc.planned_tree_is_maxtexts(golden, layout, golden.removesuffix("-mm"))


@pytest.mark.parametrize("golden,layout", CASES)
def test_bit_identical_to_maxtext(tmp_path, golden, layout):
  qc.bit_identical_to_maxtext(tmp_path, golden, layout)


@pytest.mark.parametrize("golden,layout", CASES)
def test_maxtext_checkpoints_give_back_the_original_model(tmp_path, golden, layout):
  qc.gives_back_the_original(tmp_path, golden, layout)


@pytest.mark.parametrize("golden", ["qwen3-vl", "qwen3-vl-moe-mm"])
def test_scan_is_refused_in_one_line_writing_nothing(tmp_path, golden):
  qc.scan_is_refused(tmp_path, golden)


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3-vl-moe"])
def test_text_only_conversion_of_the_multimodal_checkpoint(tmp_path, family):
  qc.text_only_from_the_multimodal_checkpoint(tmp_path, family)


@pytest.mark.parametrize("golden", ["qwen3-vl-mm", "qwen3-vl-moe-mm"])
def test_float32_round_trip_is_exact(tmp_path, golden):
  qc.float32_round_trip_is_exact(tmp_path, golden, "unscan")


def test_fused_experts_split_as_gate_then_up():
  """gate_up_proj [E, H, 2I]: wi_0 is the first I columns, wi_1 the last (not interleaved)."""
  plan = plan_to_maxtext(qc.path("qwen3-vl-moe", "hf"), scan_layers=False)
  fused = tensors(qc.path("qwen3-vl-moe", "hf"))["model.language_model.layers.1.mlp.experts.gate_up_proj"]
  restored = qc.goldens.restore(qc.items("qwen3-vl-moe", "unscan"))
  moe = "params/params/decoder/layers_1/moe_block/"
  assert np.array_equal(restored[moe + "wi_0"], fused[..., :plan.sizes["moe_mlp"]])
  assert np.array_equal(restored[moe + "wi_1"], fused[..., plan.sizes["moe_mlp"]:])


def test_model_names():
  assert family_of_model_name("qwen3-vl-2b").name == "qwen3-vl"
  assert family_of_model_name("qwen3-vl-4b").name == "qwen3-vl"
  assert family_of_model_name("qwen3-vl-30b-a3b").name == "qwen3-vl-moe"
  assert family_of_model_name("qwen3-8b").name == "qwen3"
  config = read_config(qc.path("qwen3-vl-moe", "hf"))
  assert detect_family(config, "qwen3-vl-30b-a3b").name == "qwen3-vl-moe"
  with pytest.raises(ConversionError, match="model_name=qwen3-vl-2b is a qwen3-vl model"):
    detect_family(config, "qwen3-vl-2b")


def test_expert_tensor_of_the_wrong_layout_is_named(tmp_path):
  """A gate_up_proj in transformers' in-memory layout [E, 2I, H] instead of the Hub's [E, H, 2I]."""
  src = qc.copy_hf("qwen3-vl-moe", tmp_path / "hf")
  name = "model.language_model.layers.2.mlp.experts.gate_up_proj"
  qc.rewrite_tensor(src, name, np.zeros((8, 96, 64), np.float32))
  with pytest.raises(ConversionError, match=rf"tensor {name} has shape \[8, 96, 64\] but config.json implies "
                                           r"\[8, 64, 96\] \(experts embed \(two moe_mlp\)\)"):
    plan_to_maxtext(src, scan_layers=False)


def test_a_config_without_its_vision_tower_converts_text_only(tmp_path):
  src = qc.copy_hf("qwen3-vl", tmp_path / "hf")
  config = read_config(src)
  del config["vision_config"]
  with open(f"{src}/config.json", "w") as f:
    json.dump(config, f)
  plan = plan_to_maxtext(src, scan_layers=True, use_multimodal=True)  # no deepstack: scanning is possible
  assert not any("vision_encoder" in a.path for a in plan.arrays)
  assert plan.unused and all(n.startswith("model.visual.") for n in plan.unused)
