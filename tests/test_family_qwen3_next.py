"""Qwen3-Next against MaxText's goldens (both directions, both layouts) and on a float32 model of two
scan blocks, which the one-block golden cannot show (scan steps > 1, full attention at layer 7)."""
import json

import numpy as np
import pytest

from pipeline import check_logits
from transforms.errors import ConversionError
from pipeline.planner import detect_family, family_of_model_name, placements, plan_to_maxtext, read_config
from tests import goldens
from tests.test_to_huggingface import assert_same_model, tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext

FAMILY = "qwen3-next"
LAYOUTS = ["scan", "unscan"]
SHARD = "150KB"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_planned_tree_equals_maxtext_tree(layout):
  plan = plan_to_maxtext(goldens.path(FAMILY, "hf"), scan_layers=layout == "scan")
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  assert ours == {k: v for k, v in goldens.tree(FAMILY, layout).items() if k != "step"}
  assert plan.family == FAMILY and plan.unused == ()
  names = [s.name for t in plan.tasks for s in t.sources]
  assert sorted(names) == sorted(tensors(goldens.path(FAMILY, "hf")))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bit_identical_to_maxtext(tmp_path, layout):
  _, items, _ = to_maxtext(goldens.path(FAMILY, "hf"), tmp_path, f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items(FAMILY, layout)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_maxtext_checkpoints_give_back_the_original_model(tmp_path, layout):
  plan, _ = to_hf(goldens.items(FAMILY, layout), tmp_path, hf_model_path=goldens.path(FAMILY, "hf"))
  assert plan.scan_layers == (layout == "scan")
  # Every value is copied, never rescaled: the HF tensors come back bit for bit.
  ours, theirs = tensors(tmp_path), tensors(goldens.path(FAMILY, "hf"))
  assert sorted(ours) == sorted(theirs)
  assert all(goldens.same_bits(ours[k], theirs[k]) for k in theirs)
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == read_config(goldens.path(FAMILY, "hf"))


def test_detected_from_config_and_model_name():
  config = read_config(goldens.path(FAMILY, "hf"))
  assert detect_family(config).name == FAMILY
  assert detect_family(config, "qwen3-next-80b-a3b").name == FAMILY
  assert family_of_model_name("qwen3-next-80b-a3b").name == FAMILY  # not plain qwen3
  with pytest.raises(ConversionError):
    detect_family(config, "qwen3-8b")


def _tiny_model(dest, layers=8):
  """A seeded float32 Qwen3-Next from the golden's config, saved as transformers saves it."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  config = read_config(goldens.path(FAMILY, "hf"))
  config.update(num_hidden_layers=layers, dtype="float32",
                layer_types=["full_attention" if i % 4 == 3 else "linear_attention" for i in range(layers)])
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config),
                                                         dtype=torch.float32)
  with torch.no_grad():  # norm weights start at 0 or 1: make every tensor carry distinct values
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  model.save_pretrained(dest, max_shard_size=SHARD)  # sharded: the plan reads an index
  return dest, list(model.state_dict())


def test_two_blocks_float32_round_trip_is_exact_and_logits_agree(tmp_path, capsys):
  src, state_dict_order = _tiny_model(tmp_path / "src")
  config = read_config(str(src))
  family = detect_family(config)
  ours = dict.fromkeys(p.hf_name for p in placements(family, config, family.sizes(config), True))
  # HF module order (transformers fuses the experts in memory, so those are compared by name only).
  assert [n for n in ours if ".experts." not in n] == [n for n in state_dict_order if ".experts." not in n]
  plan, items, _ = to_maxtext(src, tmp_path / "mt", "--save_dtype=float32", "--scan_layers=true")
  shapes = {a.path: a.shape for a in plan.arrays}
  assert shapes["params/params/decoder/layers/layer_3/attention/attention/query/kernel"] == (64, 2, 4, 64)
  assert shapes["params/params/decoder/layers/layer_0/attention/conv1d/kernel"] == (4, 2, 1, 160)
  plan, _ = to_hf(items, tmp_path / "hf", "--weight_dtype=float32", f"--max_shard_size={SHARD}", hf_model_path=src)
  assert len(plan.shards) > 3
  back = tensors(tmp_path / "hf")
  assert all(v.dtype == np.float32 for v in back.values())
  assert_same_model(back, tensors(src), FAMILY, ulps_dtype=np.float32)
  assert check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={src}", "--backend=ckptflow",
                            "--max_kl_div=1e-9", "--max_prefill_predict_length=48", "--prompt=I love to",
                            "--prompt=What is the"]) == 0
  assert "PASS: max per-token KL" in capsys.readouterr().out


def test_layer_pattern_maxtext_cannot_hold_is_refused(tmp_path):
  src = goldens.copy_hf(FAMILY, str(tmp_path / "hf"))
  config = read_config(src)
  config["layer_types"] = ["linear_attention", "full_attention"] * 2
  with open(f"{src}/config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ConversionError, match="full-attention layer exactly every 4th"):
    plan_to_maxtext(src)
