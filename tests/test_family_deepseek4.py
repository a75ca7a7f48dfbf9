"""DeepSeek V4 against MaxText's goldens: both layouts, both ways, under transformers' names (what
MaxText reads) and the Hub's (hf_native/, with its MTP layer); the Hub's release format (FP4 experts,
FP8 blocks with E8M0 scales) dequantized inline; and the configs and files MaxText's model cannot take."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

from models.deepseek4_layers import hub_name
from pipeline.planner import plan_to_maxtext, read_config
from tests import goldens
from tests.test_to_huggingface import tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms.errors import ConversionError
from transforms.fp4_e2m1 import E2M1_VALUES, dequantize_fp4
from transforms.safetensors_io import write_safetensors

FAMILY = "deepseek4"
LAYOUTS = ["scan", "unscan"]
F32_CLASS = ("_hc.fn", "_hc.base", "_hc.scale", "hc_head.hc_fn", "hc_head.hc_base", "hc_head.hc_scale", ".sinks",
             "position_bias", "e_score_correction_bias")


def path(*parts, family=FAMILY):
  return os.path.join(goldens.GOLDENS_NEWER, family, *parts)


def golden(layout, family=FAMILY):
  return goldens.restore(path(f"maxtext_{layout}", "0", "items", family=family))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("source", ["hf", "hf_native"])
def test_planned_tree_equals_maxtext_tree(layout, source):
  plan = plan_to_maxtext(path(source), scan_layers=layout == "scan")
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  with open(path(f"tree_{layout}.json")) as f:
    assert ours == {k: v for k, v in json.load(f).items() if k != "step"}
  assert plan.family == FAMILY
  # MaxText's model has no MTP layer: the Hub's mtp.0.* are what the `ignored:` line lists.
  hf = tensors(path(source))
  assert list(plan.unused) == sorted(n for n in hf if n.startswith("mtp."))
  assert all(hub_name(n) in hf for n in tensors(path("hf"))) if source == "hf_native" else not plan.unused


@pytest.mark.parametrize("layout,source", [("scan", "hf"), ("unscan", "hf"), ("scan", "hf_native")])
def test_bit_identical_to_maxtext(tmp_path, layout, source):
  _, items, _ = to_maxtext(path(source), tmp_path, f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), golden(layout))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_way_back_gives_the_original_tensors_with_their_dtypes(tmp_path, layout):
  """MaxText writes every leaf bf16; the way back restores F32 hc_*/sinks/position biases/router bias
  and I64 tid2eid, bit for bit, under the names of --hf_model_path."""
  to_hf(path(f"maxtext_{layout}", "0", "items"), tmp_path, hf_model_path=path("hf"))
  ours, theirs = tensors(tmp_path), tensors(path("hf"))
  assert sorted(ours) == sorted(theirs) and all(goldens.same_bits(ours[k], theirs[k]) for k in theirs)
  assert {k: str(v.dtype) for k, v in ours.items() if v.dtype != ml_dtypes.bfloat16} == {
      k: "int64" if k.endswith("tid2eid") else "float32" for k in theirs if k.endswith(F32_CLASS + ("tid2eid",))}


def test_way_back_writes_the_hub_names_without_mtp(tmp_path):
  to_hf(path("maxtext_unscan", "0", "items"), tmp_path, hf_model_path=path("hf_native"))
  ours, hub = tensors(tmp_path), tensors(path("hf_native"))
  assert sorted(ours) == sorted(n for n in hub if not n.startswith("mtp."))
  assert all(goldens.same_bits(ours[k], hub[k]) for k in ours)
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  want = read_config(path("hf_native"))
  assert config["num_nextn_predict_layers"] == 0 and config["compress_ratios"] == want["compress_ratios"][:7]
  mtp = ("num_nextn_predict_layers", "compress_ratios")
  assert {k: v for k, v in config.items() if k not in mtp} == {k: v for k, v in want.items() if k not in mtp}


def test_fp4_fp8_release_format_converts_as_its_dequantized_twin(tmp_path):
  """deepseek4-fp4/hf (FP4 experts, FP8 attention/shared experts, E8M0 scales) read directly: the
  same arrays as MaxText's from the dequantized twin, and as ours from that twin."""
  _, items, _ = to_maxtext(path("hf", family="deepseek4-fp4"), tmp_path / "q", "--scan_layers=false")
  quantized = goldens.restore(items)
  goldens.assert_same_checkpoint(quantized, golden("unscan", family="deepseek4-fp4"))
  _, items, _ = to_maxtext(path("hf_bf16", family="deepseek4-fp4"), tmp_path / "d", "--scan_layers=false")
  goldens.assert_same_checkpoint(quantized, goldens.restore(items))


def test_fp4_values_and_nibble_order():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 256, (3, 32), dtype=np.uint8)
  exponents = rng.integers(120, 135, (3, 2), dtype=np.uint8)
  value = dequantize_fp4(codes.view(np.int8), exponents.view(ml_dtypes.float8_e8m0fnu))
  for r, c in [(0, 0), (1, 1), (2, 63), (2, 32)]:
    nibble = codes[r, c // 2] >> (4 * (c % 2)) & 0xF
    assert value[r, c] == E2M1_VALUES[nibble] * 2.0 ** (int(exponents[r, c // 32]) - 127)


def _copy(tmp_path, family, source="hf"):
  src = str(tmp_path / "src")
  shutil.copytree(path(source, family=family), src)
  for name in os.listdir(src):
    os.chmod(os.path.join(src, name), 0o644)
  return src


def _edit_config(src, **changes):
  config = {**read_config(src), **changes}
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)


def _refused(src, tmp_path, message, *flags):
  with pytest.raises(ConversionError, match=message) as e:
    to_maxtext(src, tmp_path / "out", *flags)
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_compress_ratios_that_disagree_with_the_layer_count_are_refused(tmp_path):
  src = _copy(tmp_path, FAMILY, "hf_native")
  _edit_config(src, compress_ratios=[0, 0, 4, 128, 4, 128])
  _refused(src, tmp_path, r"compress_ratios lists 6 layers but num_hidden_layers is 7 \(\+ 1 MTP\)")


def test_layers_that_do_not_pair_refuse_the_scanned_layout(tmp_path):
  src = _copy(tmp_path, FAMILY, "hf_native")
  _edit_config(src, compress_ratios=[0, 0, 4, 128, 128, 128, 4, 0])
  _refused(src, tmp_path, r"scan_layers=true: MaxText's deepseek4 scans .* \(HCA, CSA\) pairs", "--scan_layers=true")


def test_an_fp4_scale_grid_of_the_wrong_shape_is_refused(tmp_path):
  src = _copy(tmp_path, "deepseek4-fp4")
  shard = os.path.join(src, "model-00001-of-00001.safetensors")
  values = tensors(src)
  name = "layers.3.ffn.experts.2.w1.scale"
  values[name] = values[name][:, :2]
  write_safetensors(shard, values)
  _refused(src, tmp_path, f"tensor {name} is F8_E8M0 \\[64, 2\\] but FP4 .* needs F8_E8M0 \\[64, 3\\]")


def test_float32_round_trip_is_exact(tmp_path):
  """A float32 V4 (every weight with all 24 mantissa bits, hc_*/sinks/biases too) through a float32
  MaxText checkpoint comes back bit for bit, tid2eid as I64."""
  src = _copy(tmp_path, FAMILY, "hf_native")
  rng = np.random.default_rng(1)
  values = {k: (v if v.dtype == np.int64 else
                (v.astype(np.float32) * (1 + rng.uniform(-2**-9, 2**-9, v.shape).astype(np.float32))))
            for k, v in tensors(src).items()}
  shard = os.path.join(src, "model-00001-of-00001.safetensors")
  write_safetensors(shard, values)
  _edit_config(src, torch_dtype="float32")
  _, items, _ = to_maxtext(src, tmp_path / "mt", "--scan_layers=true", "--save_dtype=float32")
  to_hf(items, tmp_path / "hf", hf_model_path=src)
  ours = tensors(tmp_path / "hf")
  assert sorted(ours) == sorted(k for k in values if not k.startswith("mtp."))
  assert all(ours[k].dtype == values[k].dtype and goldens.same_bits(ours[k], values[k]) for k in ours)


def test_row_blocks_of_fp4_and_fp8_tensors_give_the_same_checkpoint(tmp_path):
  src = path("hf", family="deepseek4-fp4")
  plan, items, _ = to_maxtext(src, tmp_path / "split", "--scan_layers=false", "--max_element_size=4KB")
  split = {t.sources[0].name for t in plan.tasks if t.block is not None}
  assert any("experts" in n for n in split) and any("attn.wq_b" in n for n in split)
  goldens.assert_same_checkpoint(goldens.restore(items), golden("unscan", family="deepseek4-fp4"))
