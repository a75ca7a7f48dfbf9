"""Gemma 4 (31B dense, 26B MoE, E2B/E4B, with and without the vision tower) against MaxText's goldens in
every layout MaxText makes, both directions; the layouts it refuses; seeded float32 models (every mantissa
bit used, which the bf16 goldens cannot show); and the configs MaxText cannot hold."""
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

# (golden, layout) for every layout MaxText makes; E2B/E4B are unscanned only.
CASES = [("gemma4", "scan"), ("gemma4", "unscan"), ("gemma4-moe", "scan"), ("gemma4-moe", "unscan"),
         ("gemma4-e2b", "unscan"), ("gemma4-e4b", "unscan"), ("gemma4-mm", "scan"), ("gemma4-mm", "unscan")]
TOWERS = ("model.vision_tower.", "model.embed_vision.")
EMBEDDING = "model.language_model.embed_tokens.weight"


def path(golden, *parts):
  return os.path.join(goldens.GOLDENS_NEWER, golden, *parts)


def meta(golden):
  with open(path(golden, "maxtext_model.json")) as f:
    return json.load(f)


def mm_flags(golden):
  return ["--use_multimodal=true"] if meta(golden)["multimodal"] else []


def text_only(hf_tensors):
  """The language model's tensors under the text-only Gemma4ForCausalLM's names."""
  return {n.replace("model.language_model.", "model.", 1): v for n, v in hf_tensors.items()
          if not n.startswith(TOWERS)}


@pytest.mark.parametrize("golden,layout", CASES)
def test_planned_tree_equals_maxtext_tree(golden, layout):
  plan = plan_to_maxtext(path(golden, "hf"), scan_layers=layout == "scan", use_multimodal=meta(golden)["multimodal"])
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  with open(path(golden, f"tree_{layout}.json")) as f:
    assert ours == {k: v for k, v in json.load(f).items() if k != "step"}
  on_disk = set(tensors(path(golden, "hf")))
  used = [s.name for t in plan.tasks for s in t.sources]
  # Each tensor is read once, but the fused experts' gate_up_proj: once for wi_0, once for wi_1.
  twice = {n for n in used if used.count(n) > 1}
  assert plan.family == "gemma4" and all(n.endswith("experts.gate_up_proj") for n in twice)
  assert set(used) | set(plan.unused) == on_disk
  # Text-only from the multimodal checkpoint: the tower is reported unused, never fatal.
  assert set(plan.unused) == (set() if meta(golden)["multimodal"] else {n for n in on_disk if n.startswith(TOWERS)})


@pytest.mark.parametrize("golden,layout", CASES)
def test_bit_identical_to_maxtext(tmp_path, golden, layout):
  _, items, _ = to_maxtext(path(golden, "hf"), tmp_path, f"--scan_layers={layout == 'scan'}", *mm_flags(golden))
  theirs = goldens.restore(path(golden, f"maxtext_{layout}", "0", "items"))
  goldens.assert_same_checkpoint(goldens.restore(items), theirs)


@pytest.mark.parametrize("golden,layout", CASES)
def test_goldens_give_back_the_original_model(tmp_path, golden, layout):
  """Names, shapes, dtypes and values of the original tensors. Text-only: the language model as a
  Gemma4ForCausalLM, bit for bit. With the tower (MaxText's own way back has none): every tensor, the
  rest bit for bit but the embedding: stored as bf16(E * sqrt(48)), which maps some pairs of neighbouring
  bf16 values to one, so about a tenth come back one bf16 step (2**-7 relative) away, whatever the inverse."""
  plan, _ = to_hf(path(golden, f"maxtext_{layout}", "0", "items"), tmp_path, *mm_flags(golden),
                  hf_model_path=path(golden, "hf"))
  assert plan.scan_layers == (layout == "scan")
  ours, original = tensors(tmp_path), tensors(path(golden, "hf"))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  if not meta(golden)["multimodal"]:
    original = text_only(original)
    assert config == {**read_config(path(golden, "hf"))["text_config"], "architectures": ["Gemma4ForCausalLM"],
                      "model_type": "gemma4_text", "dtype": "bfloat16", "transformers_version": "5.24.0",
                      "tie_word_embeddings": True}
  else:
    assert config == read_config(path(golden, "hf"))
  assert sorted(ours) == sorted(original)
  lossy = {n for n in original if not goldens.same_bits(ours[n], original[n])}
  assert lossy <= {EMBEDDING}
  for name in lossy:
    want = original[name].astype(np.float64)
    assert np.all(np.abs(ours[name].astype(np.float64) - want) <= np.abs(want) * 2.0 ** -7), name


def test_text_only_way_back_loads_in_transformers_and_predicts_like_the_original(tmp_path):
  """The E2B text model back as Gemma4ForCausalLM (per-layer embeddings, KV-shared layers with no k/v
  weights): transformers loads it with nothing missing or unexpected, and its logits are the original's."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  to_hf(path("gemma4-e2b", "maxtext_unscan", "0", "items"), tmp_path, hf_model_path=path("gemma4-e2b", "hf"))
  model, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
  assert type(model).__name__ == "Gemma4ForCausalLM"
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  original = transformers.AutoModelForImageTextToText.from_pretrained(path("gemma4-e2b", "hf"))
  ids = torch.tensor([[2, 5, 9, 200, 3, 77, 301]])
  with torch.no_grad():
    assert torch.equal(model(ids).logits, original(input_ids=ids).logits)


@pytest.mark.parametrize("golden", ["gemma4-e2b", "gemma4-e4b"])
def test_scanned_small_models_are_refused_in_one_line_writing_nothing(tmp_path, golden):
  with pytest.raises(ConversionError) as e:
    to_maxtext(path(golden, "hf"), tmp_path / "out", "--scan_layers=true")
  assert "scan_layers=true" in str(e.value) and "nn.scan" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()


def test_detected_from_config_and_model_name():
  for golden in ("gemma4", "gemma4-moe", "gemma4-e2b", "gemma4-e4b", "gemma4-mm"):
    config = read_config(path(golden, "hf"))
    assert detect_family(config, meta(golden)["mt_model_name"]).name == "gemma4"
    assert detect_family({**config["text_config"], "architectures": ["Gemma4ForCausalLM"]}).name == "gemma4"
  for name in ("gemma4-31b", "gemma4-26b", "gemma4-e2b", "gemma4-e4b"):
    assert family_of_model_name(name).name == "gemma4"
  with pytest.raises(ConversionError, match="is a gemma3 model"):
    detect_family(read_config(path("gemma4", "hf")), "gemma3-4b")


def _edited(tmp_path, golden, **text):
  src = str(tmp_path / "hf")
  shutil.copytree(path(golden, "hf"), src)
  for name in os.listdir(src):
    os.chmod(os.path.join(src, name), 0o644)
  config = read_config(src)
  config["text_config"].update(text)
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)
  return src


@pytest.mark.parametrize("golden,edit,flags,message", [
    ("gemma4", {"layer_types": ["sliding_attention"] * 4 + ["full_attention"] * 2 + ["sliding_attention"] * 5
                + ["full_attention"]}, (), "full_attention at layer 4, but MaxText's gemma4 decoder runs 5 sliding"),
    ("gemma4", {"per_layer_config": {"5": {"head_dim": 48, "num_key_value_heads": 1}, "11": {"head_dim": 24}}}, (),
     "per_layer_config gives layers .5, 11. different head_dim"),
    ("gemma4-moe", {"tie_word_embeddings": False}, (), "no place for lm_head.weight"),
    ("gemma4-e2b", {}, ("--use_multimodal=true", "--scan_layers=false"), "has no vision encoder yet"),
    ("gemma4-e4b", {"num_kv_shared_layers": 12}, ("--scan_layers=false",), "must be below num_hidden_layers=12"),
])
def test_configs_maxtext_cannot_hold_are_refused_in_one_line_writing_nothing(tmp_path, golden, edit, flags, message):
  src = _edited(tmp_path, golden, **edit)
  with pytest.raises(ConversionError, match=message) as e:
    to_maxtext(src, tmp_path / "out", *flags)
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def _seeded_float32_model(dest, golden):
  """A seeded float32 Gemma 4 from the golden's config, every tensor distinct, saved sharded as
  transformers saves it."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  config = {**read_config(path(golden, "hf")), "dtype": "float32"}
  torch.manual_seed(0)
  model = transformers.AutoModelForImageTextToText.from_config(transformers.AutoConfig.for_model(**config),
                                                               dtype=torch.float32)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  model.save_pretrained(dest, max_shard_size="200KB")
  return str(dest)


def test_float32_moe_round_trip_is_exact_and_logits_agree(tmp_path, capsys):
  """Two scanned blocks of 5 local + 1 global layers with experts; float32 both ways gives every tensor
  back bit for bit (values are copied; the embedding goes times sqrt(64) = 8 and back), in shards, and
  the converted checkpoint predicts what the HF model does."""
  src = _seeded_float32_model(tmp_path / "src", "gemma4-moe")
  plan, items, _ = to_maxtext(src, tmp_path / "mt", "--save_dtype=float32", "--scan_layers=true")
  shapes = {a.path: a.shape for a in plan.arrays}
  blocks = "params/params/decoder/scanned_blocks/"
  assert shapes[blocks + "local_layers/mlp/moe_block/MoeBlock_0/wi_0"] == (8, 2, 5, 64, 20)
  assert shapes[blocks + "global_layer/self_attention/key/kernel"] == (64, 2, 1, 48)
  hf_plan, _ = to_hf(items, tmp_path / "hf", "--weight_dtype=float32", "--max_shard_size=200KB", hf_model_path=src)
  assert len(hf_plan.shards) > 3
  ours, theirs = tensors(tmp_path / "hf"), text_only(tensors(src))
  assert sorted(ours) == sorted(theirs) and all(v.dtype == np.float32 for v in ours.values())
  assert all(goldens.same_bits(ours[n], theirs[n]) for n in theirs)
  assert check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={src}", "--backend=ckptflow",
                            "--max_kl_div=1e-9", "--max_prefill_predict_length=48", "--prompt=I love to"]) == 0
  assert "PASS: max per-token KL" in capsys.readouterr().out


# google/gemma-4-31b-it in bf16: 31,273,088,876 parameters (text 30,697,345,340: embedding 262144 x 5376,
# 50 sliding layers of 478,959,105 and 10 global of 534,009,857, final norm; vision tower 575,743,536),
# derived from its config.json (models/known_configs.json); the total_size of its safetensors index.
GEMMA4_31B_BYTES = 62_546_177_752


def test_real_size_31b_header_set_plans_to_the_released_size(tmp_path):
  """bench/make_model.py's gemma4-31b preset: the released config and tensor list, headers only."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  subprocess.run([sys.executable, goldens.MAKE_MODEL, "--preset", "gemma4-31b", "--sparse", "--out", str(tmp_path)],
                 check=True, capture_output=True)
  with open(tmp_path / "model.safetensors.index.json") as f:
    assert json.load(f)["metadata"]["total_size"] == GEMMA4_31B_BYTES
  plan = plan_to_maxtext(str(tmp_path), use_multimodal=True)
  assert plan.source_bytes == GEMMA4_31B_BYTES and plan.unused == ()
  shapes = {a.path.removeprefix("params/params/"): a.shape for a in plan.arrays}
  blocks = "decoder/scanned_blocks/"
  assert shapes[blocks + "local_layers/self_attention/value/kernel"] == (5376, 10, 5, 16, 256)
  assert shapes[blocks + "global_layer/self_attention/key/kernel"] == (5376, 10, 4, 512)
  assert blocks + "global_layer/self_attention/value/kernel" not in shapes  # K = V
  assert shapes["vision_encoder/Gemma4VisionEncoderLayer_0/layer_26/mlp/wo/kernel"] == (4304, 1152)
  text = plan_to_maxtext(str(tmp_path))
  assert text.source_bytes == GEMMA4_31B_BYTES - 2 * 575_743_536 and len(text.unused) == 4 + 27 * 13 + 1


@pytest.mark.parametrize("golden,layout", [("gemma4-moe", "scan"), ("gemma4-mm", "unscan")])
def test_row_blocks_give_the_same_checkpoint_and_the_same_model_back(tmp_path, golden, layout):
  """Tensors above --max_element_size (here 4 KB: the fused experts by experts, the embedding by rows,
  with the eager cast for gemma4-mm) in row blocks both ways: MaxText's checkpoint and the original back."""
  flags = (f"--scan_layers={layout == 'scan'}", "--max_element_size=4KB", *mm_flags(golden))
  plan, items, _ = to_maxtext(path(golden, "hf"), tmp_path / "mt", *flags)
  split = {t.array.path.rsplit("/", 1)[-1] for t in plan.tasks if t.block is not None}
  assert "embedding" in split and ("wi_1" in split or golden != "gemma4-moe")
  theirs = goldens.restore(path(golden, f"maxtext_{layout}", "0", "items"))
  goldens.assert_same_checkpoint(goldens.restore(items), theirs)
  hf_plan, _ = to_hf(items, tmp_path / "hf", "--max_element_size=4KB", *mm_flags(golden),
                     hf_model_path=path(golden, "hf"))
  assert any(t.split is not None for s in hf_plan.shards for t in s.tensors)
  whole, _ = to_hf(items, tmp_path / "whole", *mm_flags(golden), hf_model_path=path(golden, "hf"))
  ours, theirs = tensors(tmp_path / "hf"), tensors(tmp_path / "whole")
  assert sorted(ours) == sorted(theirs) and all(goldens.same_bits(ours[n], theirs[n]) for n in theirs)


def test_text_only_way_back_converts_again_to_the_same_checkpoint(tmp_path):
  """Gemma4ForCausalLM (what a text-only way back writes) is a source too: E2B back to HF and to MaxText
  again gives MaxText's own checkpoint bit for bit."""
  to_hf(path("gemma4-e2b", "maxtext_unscan", "0", "items"), tmp_path / "hf", hf_model_path=path("gemma4-e2b", "hf"))
  _, items, _ = to_maxtext(tmp_path / "hf", tmp_path / "mt", "--scan_layers=false")
  theirs = goldens.restore(path("gemma4-e2b", "maxtext_unscan", "0", "items"))
  goldens.assert_same_checkpoint(goldens.restore(items), theirs)


@pytest.mark.parametrize("golden", ["gemma4-moe", "gemma4-e2b"])
def test_released_config_without_per_layer_config_plans_the_same(tmp_path, golden):
  """The Hub's config.json names the global layers' sizes global_head_dim / num_global_key_value_heads
  (transformers turns them into per_layer_config when it loads, and writes that when it saves)."""
  text = read_config(path(golden, "hf"))["text_config"]
  hub = {k: v for k, v in text.items() if k != "per_layer_config"}
  overrides = next(iter(text["per_layer_config"].values()))
  hub.update(global_head_dim=overrides["head_dim"], num_global_key_value_heads=overrides.get("num_key_value_heads"))
  src = _edited(tmp_path, golden)
  config = read_config(src)
  config["text_config"] = hub
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)
  layout = meta(golden)["layouts"][0] == "scan"
  assert plan_to_maxtext(src, scan_layers=layout).arrays == plan_to_maxtext(path(golden, "hf"), scan_layers=layout).arrays
