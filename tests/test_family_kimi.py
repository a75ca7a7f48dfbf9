"""Kimi K2 (DeepSeek-V3's architecture, MaxText kimi-k2-1t) with its routed experts in compressed-tensors
pack-quantized int4, read directly: the arrays of its dequantized twin bf16(q * s), MaxText's own to
float16's step (its scripts save float16), both layouts; the way back; a truncated packed tensor."""
import json
import os
import shutil

import numpy as np
import pytest

from pipeline.planner import family_of_model_name, plan_to_maxtext
from tests import goldens
from tests.test_to_huggingface import tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms.errors import ConversionError
from transforms.packed_int4 import dequantize_int4, unpack_int4
from transforms.safetensors_io import write_safetensors

FAMILY = "kimi-k2-int4"
FLOAT16_STEP = 2.0 ** -24


def path(*parts):
  return os.path.join(goldens.GOLDENS_NEWER, FAMILY, *parts)


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_int4_source_converts_as_its_dequantized_twin_and_as_maxtext(tmp_path, layout):
  flag = f"--scan_layers={layout == 'scan'}"
  plan, items, _ = to_maxtext(path("hf"), tmp_path / "q", flag)
  assert plan.family == "deepseek3" and plan.unused == ()
  ours = goldens.restore(items)
  _, twin, _ = to_maxtext(path("hf_bf16"), tmp_path / "d", flag)
  goldens.assert_same_checkpoint(ours, goldens.restore(twin))
  theirs = goldens.restore(path(f"maxtext_{layout}", "0", "items"))
  assert sorted(ours) == sorted(theirs)
  for k, v in theirs.items():
    assert v.shape == ours[k].shape, k
    assert np.all(np.abs(ours[k].astype(np.float64) - v.astype(np.float64)) <= FLOAT16_STEP), k


def test_way_back_gives_the_dequantized_model(tmp_path):
  """From the int4 model's MaxText checkpoint, HF tensors as the dequantized twin holds them (bf16
  .weight, no packed/scale/shape tensors) and a config without the quantization_config."""
  _, items, _ = to_maxtext(path("hf"), tmp_path / "mt", "--scan_layers=true")
  to_hf(items, tmp_path / "hf", hf_model_path=path("hf"))
  ours, twin = tensors(tmp_path / "hf"), tensors(path("hf_bf16"))
  assert sorted(ours) == sorted(twin)
  assert all(goldens.same_bits(ours[k], twin[k]) for k in ours)
  with open(tmp_path / "hf" / "config.json") as f:
    assert "quantization_config" not in json.load(f)


def test_model_name_is_deepseek3():
  assert family_of_model_name("kimi-k2-1t").name == "deepseek3"


def test_unpack_order_and_offset():
  rng = np.random.default_rng(0)
  q = rng.integers(-8, 8, (4, 64)).astype(np.int8)
  words = np.zeros((4, 8), np.uint32)
  for k in range(8):  # value 8c + k in bits 4k..4k+3 of int c, stored as q + 8
    words |= (q[:, k::8].astype(np.int64) + 8).astype(np.uint32) << np.uint32(4 * k)
  assert np.array_equal(unpack_int4(words.view(np.int32)), q)
  scale = rng.random((4, 2)).astype(np.float32)
  assert np.array_equal(dequantize_int4(words.view(np.int32), scale, 32), q * np.repeat(scale, 32, axis=1))


def test_a_truncated_packed_tensor_is_refused_in_one_line_writing_nothing(tmp_path):
  src = str(tmp_path / "src")
  shutil.copytree(path("hf"), src)
  for name in os.listdir(src):
    os.chmod(os.path.join(src, name), 0o644)
  values = tensors(src)
  name = "model.layers.2.mlp.experts.5.up_proj.weight_packed"
  values[name] = values[name][:, :-1]
  write_safetensors(os.path.join(src, "model.safetensors"), values)
  with pytest.raises(ConversionError, match=f"tensor {name.replace('.', '[.]')} \\[32, 7\\] \\(56 values a row\\) "
                     ".* needs \\[32, 1.75\\]\\); the packed tensor or its scales are truncated") as e:
    to_maxtext(src, tmp_path / "out")
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
  with pytest.raises(ConversionError, match="truncated"):
    plan_to_maxtext(src)


def test_row_blocks_of_packed_tensors_give_the_same_checkpoint(tmp_path):
  """Split into row blocks (--max_element_size), each block reads only its own packed rows and scales."""
  plan, items, _ = to_maxtext(path("hf"), tmp_path / "split", "--scan_layers=false", "--max_element_size=2KB")
  assert any(t.block is not None and "experts" in t.sources[0].name for t in plan.tasks)
  _, whole, _ = to_maxtext(path("hf"), tmp_path / "whole", "--scan_layers=false")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(whole))
