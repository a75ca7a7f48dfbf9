"""Qwen3.5-MoE (hybrid gated DeltaNet + gated attention, fused experts, shared expert, vision tower)
against MaxText's goldens in both layouts and directions; the DeltaNet projections joined per key
head and cut out again; gate_up_proj back whole (MaxText's own way back scrambles it)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.planner import detect_family, family_of_model_name, plan_to_maxtext, read_config
from tests import goldens, qwen_checks as qc
from tests.test_to_huggingface import tensors
from transforms.errors import ConversionError
from transforms.safetensors_io import list_checkpoint
from transforms.tensor_ops import GroupByHead

CASES = qc.cases("qwen3.5-moe")


@pytest.mark.parametrize("golden,layout", CASES)
def test_planned_tree_equals_maxtext_tree(golden, layout):
  qc.planned_tree_is_maxtexts(golden, layout, "qwen3.5-moe")


@pytest.mark.parametrize("golden,layout", CASES)
def test_bit_identical_to_maxtext(tmp_path, golden, layout):
  qc.bit_identical_to_maxtext(tmp_path, golden, layout)


@pytest.mark.parametrize("golden,layout", CASES)
def test_maxtext_checkpoints_give_back_the_original_model(tmp_path, golden, layout):
  qc.gives_back_the_original(tmp_path, golden, layout)


def test_text_only_conversion_of_the_multimodal_checkpoint(tmp_path):
  qc.text_only_from_the_multimodal_checkpoint(tmp_path, "qwen3.5-moe")


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_float32_round_trip_is_exact(tmp_path, layout):
  qc.float32_round_trip_is_exact(tmp_path, "qwen3.5-moe-mm", layout)


def test_deltanet_projections_are_grouped_per_key_head():
  """in_proj_qkvz holds, for key head h: q and k rows of head h, then the v and z rows of the value
  heads h serves; in_proj_ba: its b rows, then its a rows (MaxText's own regrouping, spelled out)."""
  hf = tensors(qc.path("qwen3.5-moe", "hf"))
  mt = qc.goldens.restore(qc.items("qwen3.5-moe", "unscan"))
  sizes = plan_to_maxtext(qc.path("qwen3.5-moe", "hf"), scan_layers=False).sizes
  k_heads, k_dim, v_group, per_k = sizes["k_heads"], sizes["k_dim"], sizes["v_group"], sizes["v_per_k"]
  layer = "model.language_model.layers.4.linear_attn."
  q, k, v = np.split(hf[layer + "in_proj_qkv.weight"], [k_heads * k_dim, 2 * k_heads * k_dim])
  z, b, a = hf[layer + "in_proj_z.weight"], hf[layer + "in_proj_b.weight"], hf[layer + "in_proj_a.weight"]
  rows = lambda x, h, w: x[h * w:(h + 1) * w]
  qkvz = np.concatenate([np.concatenate([rows(q, h, k_dim), rows(k, h, k_dim), rows(v, h, v_group),
                                         rows(z, h, v_group)]) for h in range(k_heads)]).T
  ba = np.concatenate([np.concatenate([rows(b, h, per_k), rows(a, h, per_k)]) for h in range(k_heads)]).T
  assert np.array_equal(mt["params/params/decoder/layers_4/attention/in_proj_qkvz/kernel"], qkvz)
  assert np.array_equal(mt["params/params/decoder/layers_4/attention/in_proj_ba/kernel"], ba)
  op = GroupByHead("k_heads", ("k_dim", "k_dim", "v_group", "v_group"))
  flat = np.concatenate([q, k, v, z]).T
  assert np.array_equal(op.inverse(op.forward(flat, sizes), sizes), flat)


def test_fused_experts_split_as_gate_rows_then_up_rows():
  fused = tensors(qc.path("qwen3.5-moe", "hf"))["model.language_model.layers.5.mlp.experts.gate_up_proj"]
  mt = qc.goldens.restore(qc.items("qwen3.5-moe", "scan"))
  experts = "params/params/decoder/layers/layer_1/mlp/routed_experts/"  # layer 5 = step 1, member 1
  half = fused.shape[1] // 2
  assert np.array_equal(mt[experts + "wi_0"][:, 1], fused[:, :half].transpose(0, 2, 1))
  assert np.array_equal(mt[experts + "wi_1"][:, 1], fused[:, half:].transpose(0, 2, 1))


def test_model_names():
  assert family_of_model_name("qwen3.5-35b-a3b").name == "qwen3.5-moe"
  assert family_of_model_name("qwen3.5-397b-a17b").name == "qwen3.5-moe"
  config = read_config(qc.path("qwen3.5-moe", "hf"))
  assert detect_family(config, "qwen3.5-35b-a3b").name == "qwen3.5-moe"
  with pytest.raises(ConversionError):
    detect_family(config, "qwen3-next-80b-a3b")


def test_missing_projection_is_named(tmp_path):
  src = qc.copy_hf("qwen3.5-moe", tmp_path / "hf")
  weights = {n: v.astype(np.float32) for n, v in tensors(src).items()}
  del weights["model.language_model.layers.1.linear_attn.in_proj_z.weight"]
  qc.safetensors.numpy.save_file(weights, f"{src}/model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ConversionError, match="tensor model.language_model.layers.1.linear_attn.in_proj_z.weight is "
                                            "missing from the checkpoint"):
    plan_to_maxtext(src)


def test_layer_pattern_maxtext_cannot_hold_is_refused(tmp_path):
  src = qc.copy_hf("qwen3.5-moe", tmp_path / "hf")
  config = read_config(src)
  config["text_config"]["layer_types"] = ["linear_attention", "full_attention"] * 4
  with open(f"{src}/config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ConversionError, match="MaxText's qwen3.5-moe needs a full-attention layer exactly every 4th"):
    plan_to_maxtext(src)


def test_real_size_plan_accounts_for_every_byte_of_the_checkpoint(tmp_path):
  """Qwen3.5-35B-A3B's real config and tensor list (bench/make_model.py, headers only): the plan reads
  every text and vision tensor, reports the MTP layer as ignored, and nothing else is left over."""
  src = str(tmp_path / "q35")
  subprocess.run([sys.executable, goldens.MAKE_MODEL, "--preset", "qwen3.5-35b-a3b", "--sparse", "--out", src],
                 check=True, capture_output=True)
  with open(f"{src}/model.safetensors.index.json") as f:
    index = json.load(f)
  sizes = {name: ref.nbytes for name, ref in list_checkpoint(src).items()}
  assert sum(sizes.values()) == index["metadata"]["total_size"] == 71_903_645_408  # 35.95B bf16 parameters
  mtp = {n for n in sizes if n.startswith("mtp.")}
  for multimodal in (True, False):
    plan = plan_to_maxtext(src, scan_layers=True, use_multimodal=multimodal)
    read = {s.name for t in plan.tasks for s in t.sources}
    assert read | set(plan.unused) | mtp == set(sizes) and not read & mtp
    assert plan.dequantized_bytes == sum(sizes[n] for n in read)  # each distinct source tensor once
    assert {n.split(".")[1] for n in plan.unused} == (set() if multimodal else {"visual"})
  assert len(mtp) == 785 and sum(n.startswith("model.visual.") for n in sizes) == 333
  scanned = [a for a in plan.arrays if "/decoder/layers/layer_" in a.path]
  assert len(scanned) == 3 * 17 + 16 and all(a.shape[1] == 10 for a in scanned)  # 10 cycles of 4 layers
