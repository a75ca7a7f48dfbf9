"""LoRA adapters both ways and merged, against MaxText's own outputs where MaxText is right and PEFT's math.

Goldens: tests/data/goldens_train/lora-llama3.1 (MaxText's to_maxtext/to_huggingface on a real PEFT
adapter; checks.json says which of its outputs are right). Other families get a PEFT adapter made here.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import warnings

import ml_dtypes
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import models
from models.lora import factors, lora_able, lora_family
from pipeline import cli, to_huggingface_job, to_maxtext_job
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS
from transforms.convert import hf_to_maxtext
from transforms.errors import ConversionError
from transforms.lora import RANK
from transforms.safetensors_io import list_checkpoint, read_header, read_tensor, write_safetensors
from transforms.tensor_ops import parse_axes, rearrange

LORA = os.path.join(goldens.GOLDENS_TRAIN, "lora-llama3.1")
BASE = os.path.join(LORA, "hf_base")
ADAPTER = os.path.join(LORA, "hf_adapter")
BF16_EPS = float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps)
LAYOUTS = {"scan": True, "unscan": False}


def maxtext_adapter(layout: str, meta: bool = True) -> str:
  return os.path.join(LORA, f"maxtext_adapter_{layout}{'' if meta else '_nometa'}", "llama3.1-8b", "hf_adapter",
                      "0", "items")


def to_mt(out, *flags, hf_model_path=BASE):
  args = [f"--base_output_directory={out}", "--progress=false", *IN_PROCESS, *flags]
  if hf_model_path:
    args.append(f"--hf_model_path={hf_model_path}")
  return to_maxtext_job.convert(PipelineOptions(args), args)


def to_hf(out, *flags, hf_model_path=BASE):
  args = [f"--base_output_directory={out}", "--progress=false", *IN_PROCESS, *flags]
  if hf_model_path:
    args.append(f"--hf_model_path={hf_model_path}")
  return to_huggingface_job.convert(PipelineOptions(args), args)


def tensors(path: str) -> dict[str, np.ndarray]:
  refs = read_header(path) if path.endswith(".safetensors") else list_checkpoint(path)
  return {name: read_tensor(ref) for name, ref in refs.items()}


def within_one_rounding(got: np.ndarray, want: np.ndarray, eps: float = BF16_EPS) -> bool:
  """|got - want| <= eps |want| everywhere: got is want rounded once (or its neighbour at a tie)."""
  diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
  return bool(np.all(diff <= eps * np.abs(want.astype(np.float64))))


# ---------------------------------------------------------------- the derived mapping, every family


@pytest.mark.parametrize("family", [f for f in models.FAMILIES if lora_family(f) is not None], ids=lambda f: f.name)
def test_factors_carry_the_kernels_transform_for_every_family(family):
  """a_mt @ b_mt, laid out as the kernel, is the kernel's own transform of the HF delta B A (every op, every family)."""
  rng = np.random.default_rng(0)
  derived = lora_family(family)
  names = {a for p in family.params for g in parse_axes(p.hf_axes) for a in g}
  sizes = {**{n: 2 + i % 5 for i, n in enumerate(sorted(names))}, RANK: 3, "query_scale": 0.125}
  sizes["head_dim"] = sizes.get("head_dim", 4) * 2  # RoPE pairs need an even head_dim
  checked = 0
  for param in family.params:
    pair = factors(param)
    if pair is None:
      continue
    assert pair.a.hf in {p.hf for p in derived.params} and pair.b.hf in {p.hf for p in derived.params}
    a_param, b_param = pair.a, pair.b
    out, inputs = parse_axes(param.hf_axes)
    a = rng.standard_normal((sizes[RANK], int(np.prod([sizes[n] for n in inputs]))))
    b = rng.standard_normal((int(np.prod([sizes[n] for n in out])), sizes[RANK]))
    kernel_delta = hf_to_maxtext([b @ a], param, sizes)
    a_mt, b_mt = hf_to_maxtext([a], a_param, sizes), hf_to_maxtext([b], b_param, sizes)
    product = rearrange(a_mt @ b_mt, f"({' '.join(inputs)}) ({' '.join(out)})", param.mt_axes, sizes)
    np.testing.assert_allclose(product, kernel_delta, rtol=1e-12, atol=1e-12, err_msg=param.hf)
    checked += 1
  assert checked >= 4


def test_what_is_lora_able():
  llama = models.BY_NAME["llama3.1"]
  assert sorted(p.hf.split(".")[-2] for p in llama.params if lora_able(p)) == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  moe = models.BY_NAME["qwen3-moe"]
  assert not any(lora_able(p) for p in moe.params if p.per_expert)  # experts are fused parameters, not Linear


# ---------------------------------------------------------------- HF adapter -> MaxText


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_adapter_to_maxtext_is_bit_identical_to_maxtext(tmp_path, layout):
  plan, items, _ = to_mt(tmp_path, "--model_name=llama3.1-8b", f"--scan_layers={LAYOUTS[layout]}",
                         f"--hf_lora_adapter_path={ADAPTER}")
  assert items == str(tmp_path / "llama3.1-8b" / "hf_adapter" / "0" / "items")  # where MaxText puts it
  assert plan.family == "llama3.1+lora"
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(maxtext_adapter(layout)))
  with open(tmp_path / "llama3.1-8b" / "hf_adapter" / "0" / "_CHECKPOINT_METADATA") as f:
    custom = json.load(f)["custom_metadata"]
  assert custom["scan_layers"] is LAYOUTS[layout]
  assert custom["lora"]["lora_rank"] == 4 and custom["lora"]["lora_alpha"] == 8.0
  assert custom["hf_lora_adapter"]["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                "up_proj", "down_proj"])
  with open(tmp_path / "llama3.1-8b" / "hf_adapter" / "0" / "ckptflow_manifest.json") as f:
    sources = json.load(f)["sources"]
  assert os.path.join(ADAPTER, "adapter_config.json") in sources and os.path.join(BASE, "config.json") in sources


def test_layers_outside_layers_to_transform_get_zero_factors(tmp_path):
  adapter = tmp_path / "adapter"
  shutil.copytree(ADAPTER, adapter)
  os.chmod(adapter, 0o755)
  kept = {k: v for k, v in tensors(str(adapter)).items() if ".layers.1." not in k}
  os.chmod(adapter / "adapter_model.safetensors", 0o644)
  write_safetensors(str(adapter / "adapter_model.safetensors"), kept)
  _, items, _ = to_mt(tmp_path / "mt", f"--hf_lora_adapter_path={adapter}", "--scan_layers=false")
  ours, full = goldens.restore(items), goldens.restore(maxtext_adapter("unscan"))
  assert sorted(ours) == sorted(full)
  for name, value in ours.items():
    assert (not value.any()) if "layers_1/" in name else goldens.same_bits(value, full[name]), name


def _forward(hf_model: dict[str, np.ndarray], scan: bool) -> dict[str, np.ndarray]:
  """Each MaxText array of the llama golden computed from an HF model in float64 (the family's own ops)."""
  from pipeline.planner import family_sizes, placements, with_options  # pylint: disable=import-outside-toplevel
  family = models.BY_NAME["llama3.1"]
  with open(os.path.join(BASE, "config.json")) as f:
    config = with_options(json.load(f), False)
  sizes = family_sizes(family, config, "test")
  out: dict[str, list] = {}
  for place in placements(family, config, sizes, scan):
    value = hf_to_maxtext([hf_model[place.hf_name].astype(np.float64)], place.param, sizes)
    out.setdefault(place.array_path, []).append((place.index, value))
  return {path: (parts[0][1] if not parts[0][0] else np.stack([v for _, v in parts], axis=parts[0][0][0][0]))
          for path, parts in out.items()}


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_merged_to_maxtext_is_the_reference_merge_rounded_once(tmp_path, layout):
  """W + (alpha/r) B A in float32 from each base tensor, one rounding: within one bf16 rounding of the float64
  reference merge; bit-identical to MaxText's merged mode except the query, which MaxText rounds twice."""
  scan = LAYOUTS[layout]
  _, items, _ = to_mt(tmp_path / "a", f"--scan_layers={scan}", f"--hf_lora_adapter_path={ADAPTER}",
                      "--load_parameters_path=mt/llama3.1/0/items")  # MaxText's switch for its merged mode
  ours = goldens.restore(items)
  reference = _forward(tensors(os.path.join(LORA, "ref_merged_f32.safetensors")), scan)
  assert sorted(ours) == sorted([*reference, "step"])
  for name, want in reference.items():
    assert within_one_rounding(ours[name], want), name
  theirs = goldens.restore(os.path.join(LORA, f"maxtext_merged_{layout}", "0", "items"))
  for name, value in theirs.items():
    assert goldens.same_bits(ours[name], value) or ("/query/" in name and within_one_rounding(ours[name], value)), name
  # Row blocks (a tiny --max_element_size splits every projection by heads / rows) give the same bits.
  plan, split_items, _ = to_mt(tmp_path / "b", f"--scan_layers={scan}", f"--hf_lora_adapter_path={ADAPTER}",
                               "--merge_lora", "--max_element_size=4KB")
  assert any(t.block is not None for t in plan.tasks if "query" in t.array.path)
  goldens.assert_same_checkpoint(goldens.restore(split_items), ours)


# ---------------------------------------------------------------- MaxText adapter -> PEFT


def _peft_logits(adapter_dir: str, base: str = BASE):
  """PEFT's logits with the adapter, and every warning (warnings and log records) loading it raised."""
  import peft  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
  records = io.StringIO()
  handler = logging.StreamHandler(records)
  handler.setLevel(logging.WARNING)
  logging.getLogger().addHandler(handler)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      model = peft.PeftModel.from_pretrained(model, adapter_dir)
  finally:
    logging.getLogger().removeHandler(handler)
  ids = torch.tensor([[1, 5, 9, 200, 3, 77, 400, 12, 60, 311, 2, 9]])
  with torch.no_grad():
    logits = model(ids).logits.double()
  return logits, {str(w.message) for w in caught} | set(filter(None, records.getvalue().splitlines()))


def _max_kl(p_logits, q_logits) -> float:
  import torch  # pylint: disable=import-outside-toplevel
  p, q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
  return float((p.exp() * (p - q)).sum(-1).max())


@pytest.fixture(scope="module")
def original_peft():
  return _peft_logits(ADAPTER)


def _check_peft_dir(out, original_peft, base_name=BASE, kl=1e-6):
  with open(out / "adapter_config.json") as f:
    config = json.load(f)
  assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
  assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"])
  assert config["base_model_name_or_path"] == base_name
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors", "ckptflow_manifest.json"]
  logits, caught = _peft_logits(str(out))
  original_logits, original_warnings = original_peft
  assert caught <= original_warnings, f"loading our adapter warns: {caught - original_warnings}"
  assert _max_kl(original_logits, logits) < kl


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_maxtext_adapter_to_peft(tmp_path, layout, original_peft):
  """MaxText's own adapter checkpoint (bf16 factors) -> a PEFT directory that PEFT loads silently, whose factors
  are the original's rounded once (q's and k's RoPE order and q's scale undone) and whose logits match."""
  plan, _ = to_hf(tmp_path, f"--lora.lora_restore_path={maxtext_adapter(layout)}")
  assert plan.family == "llama3.1+lora" and plan.scan_layers is LAYOUTS[layout]
  original, ours = tensors(ADAPTER), tensors(str(tmp_path / "adapter_model.safetensors"))
  assert sorted(ours) == sorted(original) and all(v.dtype == np.float32 for v in ours.values())
  for name, want in original.items():
    assert within_one_rounding(ours[name], want), name
    if "lora_A" in name:
      assert goldens.same_bits(ours[name], want.astype(ml_dtypes.bfloat16).astype(np.float32)), name
  _check_peft_dir(tmp_path, original_peft)


def test_adapter_without_recorded_alpha_needs_it_given(tmp_path, original_peft):
  with pytest.raises(ConversionError, match=r"does not record the adapter's lora_alpha .* pass lora.lora_alpha="):
    to_hf(tmp_path / "a", f"--lora.lora_restore_path={maxtext_adapter('scan', meta=False)}")
  with pytest.raises(ConversionError, match=r"lora.lora_rank=8 but .* has rank 4"):
    to_hf(tmp_path / "b", f"--lora.lora_restore_path={maxtext_adapter('scan', meta=False)}", "--lora.lora_rank=8",
          "--lora.lora_alpha=8")
  with pytest.raises(ConversionError, match=r"lora.lora_alpha=16 but .* records lora_alpha 8"):
    to_hf(tmp_path / "c", f"--lora.lora_restore_path={maxtext_adapter('scan')}", "--lora.lora_alpha=16")
  to_hf(tmp_path / "d", f"--lora.lora_restore_path={maxtext_adapter('scan', meta=False)}", "--lora.lora_alpha=8",
        "--lora.lora_rank=4", "--model_name=llama3.1-8b", hf_model_path=BASE)
  _check_peft_dir(tmp_path / "d", original_peft)


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_peft_round_trip_in_float32_is_exact(tmp_path, layout, original_peft):
  """PEFT -> MaxText (float32 factors) -> PEFT gives back every factor to one float32 rounding, the same logits."""
  _, items, _ = to_mt(tmp_path / "mt", f"--scan_layers={LAYOUTS[layout]}", f"--hf_lora_adapter_path={ADAPTER}",
                      "--save_dtype=float32")
  to_hf(tmp_path / "hf", f"--lora.lora_restore_path={items}")
  original, ours = tensors(ADAPTER), tensors(str(tmp_path / "hf" / "adapter_model.safetensors"))
  for name, want in original.items():
    if "q_proj.lora_B" in name:  # scaled by 1/sqrt(head_dim) in float64 each way, rounded to float32 in between
      assert within_one_rounding(ours[name], want, float(np.finfo(np.float32).eps)), name
    else:
      assert goldens.same_bits(ours[name], want), name
  with open(tmp_path / "hf" / "adapter_config.json") as f:
    config = json.load(f)
  with open(os.path.join(ADAPTER, "adapter_config.json")) as f:
    came_in = json.load(f)
  assert {k: v for k, v in config.items() if k not in ("base_model_name_or_path", "target_modules")} == \
      {k: v for k, v in came_in.items() if k not in ("base_model_name_or_path", "target_modules")}
  _check_peft_dir(tmp_path / "hf", original_peft, kl=1e-10)


# ---------------------------------------------------------------- merged MaxText -> HF


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_merged_to_huggingface_is_peft_merge_rounded_once(tmp_path, layout):
  """A float32 MaxText base and float32 factors -> every merged weight within one bf16 rounding of the
  reference merge, as PEFT's own merge is; row blocks give the same bits."""
  scan = LAYOUTS[layout]
  _, base, _ = to_mt(tmp_path / "base", f"--scan_layers={scan}", "--save_dtype=float32")
  _, adapter, _ = to_mt(tmp_path / "adapter", f"--scan_layers={scan}", f"--hf_lora_adapter_path={ADAPTER}",
                        "--save_dtype=float32")
  to_hf(tmp_path / "hf", f"--load_parameters_path={base}", f"--lora.lora_restore_path={adapter}",
        "--weight_dtype=bfloat16")
  ours = tensors(str(tmp_path / "hf"))
  reference, peft_merge = tensors(os.path.join(LORA, "ref_merged_f32.safetensors")), tensors(os.path.join(LORA,
                                                                                                          "hf_merged_peft"))
  assert sorted(ours) == sorted(reference)
  for name, want in reference.items():
    assert ours[name].dtype == peft_merge[name].dtype and within_one_rounding(ours[name], want), name
    assert within_one_rounding(peft_merge[name], want), name  # what PEFT's own merge achieves
  plan, _ = to_hf(tmp_path / "split", f"--load_parameters_path={base}", f"--lora.lora_restore_path={adapter}",
                  "--weight_dtype=bfloat16", "--max_element_size=4KB")
  assert any(t.split is not None and t.lora is not None for s in plan.shards for t in s.tensors)
  split = tensors(str(tmp_path / "split"))
  assert all(goldens.same_bits(split[n], v) for n, v in ours.items())


def test_merged_to_huggingface_from_maxtexts_own_checkpoints(tmp_path):
  """MaxText's base and bf16 adapter: within one rounding of MaxText's (correct) unscanned merged export, and the
  scanned adapter gives the same bits (where MaxText's own scanned export scrambles o_proj)."""
  theirs = tensors(os.path.join(LORA, "hf_merged_from_maxtext_unscan"))
  results = {}
  for layout in ("scan", "unscan"):
    to_hf(tmp_path / layout, f"--load_parameters_path={goldens.items('llama3.1', layout)}",
          f"--lora.lora_restore_path={os.path.dirname(os.path.dirname(maxtext_adapter(layout)))}")
    results[layout] = tensors(str(tmp_path / layout))
  assert sorted(results["scan"]) == sorted(theirs)
  for name, value in theirs.items():
    assert goldens.same_bits(results["scan"][name], results["unscan"][name]), name
    assert within_one_rounding(results["scan"][name], value), name
  with open(tmp_path / "scan" / "ckptflow_manifest.json") as f:
    sources = json.load(f)["sources"]
  assert os.path.join(maxtext_adapter("scan"), "_METADATA") in sources


# ---------------------------------------------------------------- other families: a PEFT adapter made here


def _make_adapter(family: str, dest, targets) -> tuple[str, dict[str, np.ndarray]]:
  """A PEFT adapter on the family's golden (B non-zero), and PEFT's own float32 merge of it."""
  import peft  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  base = transformers.AutoModelForCausalLM.from_pretrained(goldens.path(family, "hf"), dtype=torch.float32)
  model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
  torch.manual_seed(1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "lora_B" in name:
        param.normal_(0.0, 0.05)
  model.save_pretrained(str(dest))
  merged = model.merge_and_unload().state_dict()
  return str(dest), {k: v.detach().numpy() for k, v in merged.items()}


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.mark.parametrize("family,layout,targets", [
    ("qwen3", "scan", ATTENTION + ["gate_proj", "up_proj", "down_proj"]),
    ("qwen3", "unscan", ATTENTION + ["gate_proj", "up_proj", "down_proj"]),
    ("qwen2.5", "scan", ATTENTION + ["down_proj"]),
    ("mixtral", "unscan", ATTENTION),
    ("qwen3-moe", "scan", ["q_proj", "o_proj"]),
])
def test_families_round_trip_and_merge_as_peft_does(tmp_path, family, layout, targets):
  hf = goldens.path(family, "hf")
  adapter, peft_merged = _make_adapter(family, tmp_path / "peft", targets)
  scan = LAYOUTS[layout]
  # adapter both ways, float32 factors: PEFT gets its adapter back
  _, items, _ = to_mt(tmp_path / "mt", f"--hf_lora_adapter_path={adapter}", f"--scan_layers={scan}",
                      "--save_dtype=float32", hf_model_path=hf)
  to_hf(tmp_path / "back", f"--lora.lora_restore_path={items}", hf_model_path=hf)
  original, back = tensors(adapter), tensors(str(tmp_path / "back"))
  assert sorted(back) == sorted(original)
  eps32 = float(np.finfo(np.float32).eps)
  for name, want in original.items():
    assert within_one_rounding(back[name], want, eps32), name
  # merged both ways: each within one bf16 rounding of PEFT's float32 merge
  _, merged_items, _ = to_mt(tmp_path / "merged", f"--hf_lora_adapter_path={adapter}", "--merge_lora",
                             f"--scan_layers={scan}", hf_model_path=hf)
  to_hf(tmp_path / "merged_hf", f"--load_parameters_path={merged_items}", "--weight_dtype=float32", hf_model_path=hf)
  _, base_items, _ = to_mt(tmp_path / "base", f"--scan_layers={scan}", "--save_dtype=float32", hf_model_path=hf)
  to_hf(tmp_path / "merged_back", f"--load_parameters_path={base_items}", f"--lora.lora_restore_path={items}",
        hf_model_path=hf)
  from_mt, from_hf = tensors(str(tmp_path / "merged_hf")), tensors(str(tmp_path / "merged_back"))
  base, adapted = tensors(hf), 0
  for name, value in from_mt.items():
    # transformers fuses MoE experts in its state dict; LoRA leaves them (and every untargeted weight) as they are
    want = peft_merged.get(name, base[name].astype(np.float32))
    assert within_one_rounding(value, want), name
    assert within_one_rounding(from_hf[name].astype(np.float32), want), name
    adapted += not np.array_equal(want, base[name].astype(np.float32))
  assert adapted == len(original) // 2


# ---------------------------------------------------------------- options: never the base model by mistake


def _cli(command, argv) -> tuple[int, str]:
  import contextlib  # pylint: disable=import-outside-toplevel
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.run_main(command.main, argv)
  return code, err.getvalue()


@pytest.mark.parametrize("command,words,message", [
    (to_huggingface_job, ["hf_lora_adapter_path=x"], "cannot honour MaxText's LoRA option hf_lora_adapter_path"),
    (to_maxtext_job, ["lora.lora_restore_path=x"], "cannot honour MaxText's LoRA option lora.lora_restore_path"),
    (to_maxtext_job, ["lora.lora_module_path=decoder/.*"], "lora.lora_module_path"),
    (to_maxtext_job, ["lora.lora_weight_qtype=nf4"], "lora.lora_weight_qtype"),
    (to_huggingface_job, ["lora.enable_lora=true"], "lora.enable_lora"),
    (to_huggingface_job, ["lora_input_adapters_path=gs://b/adapters"], "lora_input_adapters_path"),
    (to_maxtext_job, ["--lora_restore_path=x"], "lora.lora_restore_path= is to_huggingface's"),
    (to_huggingface_job, ["--hf_lora_adapter_path=x"], "are to_maxtext's"),
    (to_maxtext_job, ["lora.lora_rank=4"], "lora.lora_rank given without hf_lora_adapter_path="),
    # Without an adapter, load_parameters_path= is a MaxText source; an adapter given there is named as one.
    (to_maxtext_job, [f"load_parameters_path={maxtext_adapter('scan')}"], "holds a LoRA adapter"),
    (to_huggingface_job, ["lora.lora_alpha=8", f"load_parameters_path={goldens.items('llama3.1', 'scan')}"],
     "lora.lora_alpha given without lora.lora_restore_path="),
])
def test_lora_options_are_honoured_or_refused(tmp_path, command, words, message):
  out = tmp_path / "out"
  argv = [*words, f"base_output_directory={out}", f"--hf_model_path={BASE}", "--progress=false", *IN_PROCESS]
  code, err = _cli(command, argv)
  assert code == 2 and message in err and err.count("\n") == 1, err
  assert not out.exists() or not os.listdir(out)


def _adapter_with(tmp_path, **config):
  adapter = tmp_path / "adapter"
  shutil.copytree(ADAPTER, adapter)
  os.chmod(adapter, 0o755)
  with open(os.path.join(ADAPTER, "adapter_config.json")) as f:
    original = json.load(f)
  os.chmod(adapter / "adapter_config.json", 0o644)
  (adapter / "adapter_config.json").write_text(json.dumps({**original, **config}))
  return adapter


@pytest.mark.parametrize("config,flags,message", [
    ({"use_dora": True}, (), "use_dora=true cannot be converted"),
    ({"modules_to_save": ["lm_head"]}, (), "modules_to_save"),
    ({"bias": "lora_only"}, (), "bias='lora_only' cannot be converted"),
    ({"rank_pattern": {"q_proj": 8}}, (), "per-module ranks"),
    ({"use_rslora": True}, (), "use_rslora=true scales by alpha/sqrt(r)"),
    ({"r": 8}, (), "not rank r=8"),
    ({}, ("--lora.lora_alpha=32",), "lora.lora_alpha=32 but"),
    ({}, ("--lora.lora_rank=16",), "lora.lora_rank=16 but"),
])
def test_adapters_that_cannot_convert_are_one_line_errors(tmp_path, config, flags, message):
  adapter = _adapter_with(tmp_path, **config)
  with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
    to_mt(tmp_path / "out", f"--hf_lora_adapter_path={adapter}", *flags)
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("commit_success.txt"))


def test_rslora_merges_with_its_own_scale(tmp_path):
  adapter = _adapter_with(tmp_path, use_rslora=True)
  _, items, _ = to_mt(tmp_path / "rs", f"--hf_lora_adapter_path={adapter}", "--merge_lora", "--save_dtype=float32",
                      "--scan_layers=false")
  _, plain, _ = to_mt(tmp_path / "base", "--save_dtype=float32", "--scan_layers=false")
  rs, base, factors = goldens.restore(items), goldens.restore(plain), tensors(ADAPTER)
  down = "base_model.model.model.layers.0.mlp.down_proj"
  delta = factors[f"{down}.lora_B.weight"].astype(np.float64) @ factors[f"{down}.lora_A.weight"]
  name = "params/params/decoder/layers_0/mlp/wo/kernel"
  want = base[name].astype(np.float64) + (8 / np.sqrt(4)) * delta.T  # alpha / sqrt(r), not alpha / r
  np.testing.assert_allclose(rs[name], want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(rs[name], base[name].astype(np.float64) + (8 / 4) * delta.T, rtol=1e-3, atol=1e-4)


def test_merge_is_the_same_in_chunks_and_row_blocks(monkeypatch):
  from transforms import lora  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  w = rng.standard_normal((301, 67)).astype(ml_dtypes.bfloat16)
  a, b = rng.standard_normal((8, 67)).astype(np.float32), rng.standard_normal((301, 8)).astype(np.float32)
  whole = lora.merge(w, a, b, 2.0)
  want = w.astype(np.float64) + 2.0 * (b.astype(np.float64) @ a)
  assert whole.dtype == np.float32
  np.testing.assert_allclose(whole, want, rtol=1e-6, atol=1e-5)
  monkeypatch.setattr(lora, "MERGE_BYTES", 3 * 67 * 4)  # 3 rows a block, a last block of 301 % 3 = 1 row
  assert goldens.same_bits(lora.merge(w, a, b, 2.0), whole)
  assert goldens.same_bits(np.concatenate([lora.merge(w[:100], a, b[:100], 2.0), lora.merge(w[100:], a, b[100:], 2.0)]),
                           whole)
  assert all(goldens.same_bits(lora.merge(w[i:i + 1], a, b[i:i + 1], 2.0), whole[i:i + 1]) for i in (0, 150, 300))


def test_adapter_and_base_on_the_hub(tmp_path, monkeypatch):
  """hf_lora_adapter_path= a Hub repo: the same adapter checkpoint and merge as from the local directories."""
  from tests.hub_server import HubServer  # pylint: disable=import-outside-toplevel
  from transforms import hub_io  # pylint: disable=import-outside-toplevel
  server = HubServer()
  server.add_repo("me/llama-lora", ADAPTER)
  server.add_repo("me/llama", BASE)
  monkeypatch.setenv("HF_ENDPOINT", server.url)
  for name in hub_io.TOKEN_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  try:
    _, items, _ = to_mt(tmp_path / "a", "--hf_lora_adapter_path=me/llama-lora", hf_model_path="me/llama")
    assert items == str(tmp_path / "a" / "llama-lora" / "0" / "items")
    goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(maxtext_adapter("scan")))
    _, merged, _ = to_mt(tmp_path / "m", "--hf_lora_adapter_path=hf://me/llama-lora", "--merge_lora",
                         hf_model_path="me/llama")
    _, local, _ = to_mt(tmp_path / "l", f"--hf_lora_adapter_path={ADAPTER}", "--merge_lora")
    goldens.assert_same_checkpoint(goldens.restore(merged), goldens.restore(local))
    with open(tmp_path / "m" / "0" / "ckptflow_manifest.json") as f:
      assert any(s.startswith("hf://me/llama-lora@") and s.endswith("adapter_config.json") for s in json.load(f)["sources"])
  finally:
    hub_io.configure(None)
    server.close()
