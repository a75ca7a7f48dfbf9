"""OLMo 3 against MaxText's goldens in both layouts, HF -> MaxText and the way back MaxText lacks; a seeded
float32 model with every mantissa bit in use; and the configs MaxText's olmo3 cannot hold."""
import json
import os
import shutil

import numpy as np
import pytest

from pipeline import check_logits
from pipeline.planner import detect_family, family_of_model_name, plan_to_maxtext, read_config
from tests import goldens
from tests.test_to_huggingface import tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms.errors import ConversionError

FAMILY = "olmo3"
LAYOUTS = ["scan", "unscan"]


def path(*parts):
  return os.path.join(goldens.GOLDENS_NEWER, FAMILY, *parts)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_planned_tree_equals_maxtext_tree(layout):
  plan = plan_to_maxtext(path("hf"), scan_layers=layout == "scan")
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  with open(path(f"tree_{layout}.json")) as f:
    assert ours == {k: v for k, v in json.load(f).items() if k != "step"}
  assert plan.family == FAMILY and plan.unused == ()
  assert sorted(s.name for t in plan.tasks for s in t.sources) == sorted(tensors(path("hf")))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bit_identical_to_maxtext(tmp_path, layout):
  _, items, _ = to_maxtext(path("hf"), tmp_path, f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(path(f"maxtext_{layout}", "0", "items")))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_maxtext_checkpoints_give_back_the_original_model(tmp_path, layout):
  """MaxText's to_huggingface has no OLMo 3 mapping; ours gives every tensor back bit for bit (values
  are only transposed and stacked) with the config as given."""
  plan, _ = to_hf(path(f"maxtext_{layout}", "0", "items"), tmp_path, hf_model_path=path("hf"))
  assert plan.scan_layers == (layout == "scan")
  ours, theirs = tensors(tmp_path), tensors(path("hf"))
  assert sorted(ours) == sorted(theirs) and all(goldens.same_bits(ours[k], theirs[k]) for k in theirs)
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == read_config(path("hf"))


def test_detected_from_config_and_model_name():
  assert detect_family(read_config(path("hf")), "olmo3-32b").name == FAMILY
  for name in ("olmo3-7b", "olmo3-7b-pt", "olmo3-32b"):
    assert family_of_model_name(name).name == FAMILY
  with pytest.raises(ConversionError, match="is a llama3.1 model"):
    detect_family(read_config(path("hf")), "llama3.1-8b")


def _tiny_model(dest, layers=8):
  """A seeded float32 OLMo 3 from the golden's config, saved sharded as transformers saves it."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  config = {**read_config(path("hf")), "dtype": "float32", "num_hidden_layers": layers,
            "layer_types": ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(layers)]}
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config),
                                                         dtype=torch.float32)
  with torch.no_grad():  # norm weights start at 1: make every tensor carry distinct values
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  model.save_pretrained(dest, max_shard_size="100KB")
  return str(dest)


def test_float32_round_trip_is_exact_in_transformers_shards_and_logits_agree(tmp_path, capsys):
  src = _tiny_model(tmp_path / "src", layers=12)
  _, items, _ = to_maxtext(src, tmp_path / "mt", "--save_dtype=float32", "--scan_layers=true")
  plan, _ = to_hf(items, tmp_path / "hf", "--weight_dtype=float32", "--max_shard_size=100KB", hf_model_path=src)
  assert len(plan.shards) > 3
  ours, theirs = tensors(tmp_path / "hf"), tensors(src)
  assert sorted(ours) == sorted(theirs)
  assert all(ours[k].dtype == np.float32 and goldens.same_bits(ours[k], theirs[k]) for k in theirs)
  # Shards are filled as transformers fills them: the index is the one save_pretrained wrote.
  with open(tmp_path / "hf" / "model.safetensors.index.json") as f, open(f"{src}/model.safetensors.index.json") as g:
    assert json.load(f)["weight_map"] == json.load(g)["weight_map"]
  assert check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={src}", "--backend=ckptflow",
                            "--max_kl_div=1e-9", "--max_prefill_predict_length=48", "--prompt=I love to"]) == 0
  assert "PASS: max per-token KL" in capsys.readouterr().out


def _edited(tmp_path, **changes):
  src = str(tmp_path / "hf")
  shutil.copytree(path("hf"), src)
  for name in os.listdir(src):
    os.chmod(os.path.join(src, name), 0o644)
  config = {**read_config(src), **changes}
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)
  return src


SLIDING, FULL = "sliding_attention", "full_attention"


@pytest.mark.parametrize("changes,flags,message", [
    ({"layer_types": [SLIDING, FULL, SLIDING, FULL] * 2}, (), "full_attention at layer 1, but MaxText's olmo3 runs 3"),
    ({"attention_bias": True}, (), "MaxText's olmo3 attention has no biases"),
    ({"tie_word_embeddings": True}, (), "has its own output layer"),
    ({"num_hidden_layers": 6, "layer_types": [SLIDING] * 3 + [FULL] + [SLIDING] * 2}, ("--scan_layers=true",),
     "scan_layers=true: MaxText's olmo3 scans whole cycles of 4 layers .* 6 layers leave 2 over"),
])
def test_configs_maxtext_cannot_hold_are_refused_in_one_line_writing_nothing(tmp_path, changes, flags, message):
  src = _edited(tmp_path, **changes)
  with pytest.raises(ConversionError, match=message) as e:
    to_maxtext(src, tmp_path / "out", *flags)
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_six_layers_convert_unscanned(tmp_path):
  """A partial last cycle only stops the scanned layout: unscanned, MaxText runs layer i as i % 4."""
  src = _edited(tmp_path, num_hidden_layers=6, layer_types=[SLIDING] * 3 + [FULL] + [SLIDING] * 2)
  plan = plan_to_maxtext(src, scan_layers=False)
  assert {a.path.split("/")[3] for a in plan.arrays if "/layers_" in a.path} == {f"layers_{i}" for i in range(6)}
  assert set(plan.unused) == {n for n in tensors(src) if n.split(".")[2:3] in (["6"], ["7"])}
