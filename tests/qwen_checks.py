"""Checks the Qwen families MaxText added (Qwen3-VL, Qwen3-VL-MoE, Qwen3-Omni, Qwen3.5-MoE) share,
against the goldens in tests/data/goldens_newer: `<f>` (text-only, use_multimodal=false) and `<f>-mm`
(with the towers) hold the same hf/, converted by MaxText both ways."""
from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from pipeline.planner import plan_to_maxtext, read_config
from tests import goldens
from tests.test_to_huggingface import assert_same_model, tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms.errors import ConversionError

TOWERS = ("model.visual.", "thinker.visual.", "thinker.audio_tower.")


def path(golden: str, *parts: str) -> str:
  return os.path.join(goldens.GOLDENS_NEWER, golden, *parts)


def meta(golden: str) -> dict:
  with open(path(golden, "maxtext_model.json")) as f:
    return json.load(f)


def items(golden: str, layout: str) -> str:
  return path(golden, f"maxtext_{layout}", "0", "items")


def mm_flags(golden: str) -> list[str]:
  return ["--use_multimodal=true"] if meta(golden)["multimodal"] else []


def cases(*families: str) -> list[tuple[str, str]]:
  """(golden, layout) for every layout MaxText makes of each family, text-only and with its towers."""
  return [(g, layout) for f in families for g in (f, f + "-mm") for layout in meta(g)["layouts"]]


def copy_hf(golden: str, dest) -> str:
  shutil.copytree(path(golden, "hf"), dest)
  for root, dirs, files in os.walk(dest):
    for name in dirs + files:
      os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
  return str(dest)


def planned_tree_is_maxtexts(golden: str, layout: str, family: str) -> None:
  """Tree, shapes, dtypes; every source tensor used (once, or once per array a fused one splits
  into) or unused, the unused ones exactly the towers MaxText's text-only model has no place for
  (Omni's audio tower is always in it)."""
  plan = plan_to_maxtext(path(golden, "hf"), scan_layers=layout == "scan", use_multimodal=meta(golden)["multimodal"])
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  with open(path(golden, f"tree_{layout}.json")) as f:
    assert ours == {k: v for k, v in json.load(f).items() if k != "step"}
  assert plan.family == family
  used = [s.name for t in plan.tasks for s in t.sources]
  on_disk = set(tensors(path(golden, "hf")))
  fused = {n for t in plan.tasks for n in [s.name for s in t.sources] if used.count(n) > 1}
  assert all(".qkv." in n or "gate_up_proj" in n for n in fused)
  assert set(used).isdisjoint(plan.unused) and set(used) | set(plan.unused) == on_disk
  towers = ("model.visual.", "thinker.visual.")
  assert set(plan.unused) == (set() if meta(golden)["multimodal"] else {n for n in on_disk if n.startswith(towers)})


def bit_identical_to_maxtext(tmp_path, golden: str, layout: str, source: str | None = None) -> None:
  _, out, _ = to_maxtext(source or path(golden, "hf"), tmp_path / "mt", f"--scan_layers={layout == 'scan'}",
                         *mm_flags(golden))
  goldens.assert_same_checkpoint(goldens.restore(out), goldens.restore(items(golden, layout)))


def gives_back_the_original(tmp_path, golden: str, layout: str) -> None:
  """Names, shapes, dtypes and bits of the original; a text-only checkpoint gives the text tensors
  under their own names, and config.json as given."""
  plan, _ = to_hf(items(golden, layout), tmp_path / "hf", *mm_flags(golden), hf_model_path=path(golden, "hf"))
  assert plan.scan_layers == (layout == "scan")
  original = tensors(path(golden, "hf"))
  if not meta(golden)["multimodal"]:
    original = {n: v for n, v in original.items() if not n.startswith(TOWERS)}
  assert_same_model(tensors(tmp_path / "hf"), original, plan.family)
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f) == read_config(path(golden, "hf"))


def scan_is_refused(tmp_path, golden: str) -> None:
  """One line naming the layout and the reason; nothing at the output."""
  with pytest.raises(ConversionError, match=r"^scan_layers=true: .*cannot run scanned layers \(deepstack"):
    to_maxtext(path(golden, "hf"), tmp_path / "out", "--scan_layers=true", *mm_flags(golden))
  assert not (tmp_path / "out").exists()


def text_only_from_the_multimodal_checkpoint(tmp_path, family: str) -> None:
  """use_multimodal=false on the -mm checkpoint gives MaxText's text-only arrays."""
  layout = meta(family)["layouts"][-1]
  _, out, _ = to_maxtext(path(family + "-mm", "hf"), tmp_path / "mt", f"--scan_layers={layout == 'scan'}",
                         "--use_multimodal=false")
  goldens.assert_same_checkpoint(goldens.restore(out), goldens.restore(items(family, layout)))


def float32_variant(golden: str, dest, seed: int = 1) -> tuple[str, dict[str, np.ndarray]]:
  """The golden's model in float32 with every mantissa bit used (another seed than MaxText's)."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name, value in tensors(path(golden, "hf")).items():
    wide = value.astype(np.float32)
    weights[name] = wide + (rng.standard_normal(wide.shape) * 1e-3 * (np.abs(wide) + 1e-2)).astype(np.float32)
  os.makedirs(dest)
  safetensors.numpy.save_file(weights, os.path.join(dest, "model.safetensors"), metadata={"format": "pt"})
  config = read_config(path(golden, "hf"))
  config["dtype"] = "float32"
  with open(os.path.join(dest, "config.json"), "w") as f:
    json.dump(config, f)
  return str(dest), weights


def float32_round_trip_is_exact(tmp_path, golden: str, layout: str) -> None:
  """HF float32 -> MaxText float32 -> HF float32 gives every bit back; a bf16 save rounds once."""
  src, weights = float32_variant(golden, tmp_path / "src")
  scan = f"--scan_layers={layout == 'scan'}"
  _, out, _ = to_maxtext(src, tmp_path / "mt", scan, "--save_dtype=float32", *mm_flags(golden))
  to_hf(out, tmp_path / "hf", "--weight_dtype=float32", *mm_flags(golden), hf_model_path=src)
  back = tensors(tmp_path / "hf")
  assert sorted(back) == sorted(weights)
  assert all(goldens.same_bits(back[n], w) for n, w in weights.items())
  _, out16, _ = to_maxtext(src, tmp_path / "mt16", scan, *mm_flags(golden))
  to_hf(out16, tmp_path / "hf16", *mm_flags(golden), hf_model_path=src)
  rounded = {n: w.astype(ml_dtypes.bfloat16).astype(np.float32) for n, w in weights.items()}
  assert all(goldens.same_bits(v, rounded[n]) for n, v in tensors(tmp_path / "hf16").items())


def rewrite_tensor(src: str, name: str, value: np.ndarray) -> None:
  """Replaces one tensor of the single-file checkpoint at `src` (float32 values, as saved)."""
  file = os.path.join(src, "model.safetensors")
  weights = {n: v.astype(np.float32) for n, v in tensors(src).items()}
  weights[name] = value
  safetensors.numpy.save_file(weights, file, metadata={"format": "pt"})
