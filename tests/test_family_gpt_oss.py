"""GPT-OSS against MaxText's goldens: tree, both directions, both layouts, and the fused experts.

The golden HF checkpoint stores each layer's experts fused: gate_up_proj [experts, embed, 2*moe_mlp]
with gate and up interleaved on the last axis. These tests pin that fact, so a spec that splits the
axis into halves instead (the natural mistake) fails here and in the logit checker.
"""
import collections
import dataclasses

import numpy as np
import pytest

import models
from transforms.errors import ConversionError
from pipeline.planner import detect_family, plan_to_maxtext, read_config
from tests import goldens
from tests.test_check_logits import check
from tests.test_to_huggingface import assert_same_model, tensors, to_hf
from tests.test_to_maxtext import convert as to_maxtext
from transforms import safetensors_io
from transforms.convert import hf_to_maxtext, maxtext_to_hf

FAMILY = "gpt-oss"
HF = goldens.path(FAMILY, "hf")
SHORT = "--prompt=The lighthouse keeper wrote in the log that the storm had passed"


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_planned_tree_equals_maxtext_tree(layout):
  plan = plan_to_maxtext(HF, scan_layers=layout == "scan")
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  assert ours == {k: v for k, v in goldens.tree(FAMILY, layout).items() if k != "step"}
  assert plan.family == FAMILY


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_every_source_tensor_is_used_once_per_part(layout):
  """Like test_plan's exactly-once check, generalised: a fused tensor is read once per part."""
  plan = plan_to_maxtext(HF, scan_layers=layout == "scan")
  family = models.BY_NAME[FAMILY]
  parts = collections.defaultdict(list)
  for task in plan.tasks:
    (source,) = task.sources
    parts[source.name].append(family.param(task.param).part)
  assert set(parts) == set(safetensors_io.list_checkpoint(HF)) and plan.unused == ()
  fused = {n: p for n, p in parts.items() if p != [None]}
  fused_names = (f"model.layers.{i}.mlp.experts.gate_up_proj{s}" for i in range(4) for s in ("", "_bias"))
  assert sorted(fused) == sorted(fused_names)
  assert all(sorted(p) == [("two", 0), ("two", 1)] for p in fused.values())


def test_gate_and_up_are_interleaved_in_the_golden():
  """wi_0 is gate_up[..., 0::2] and wi_1 is gate_up[..., 1::2] (not the halves), and they join back."""
  family = models.BY_NAME[FAMILY]
  sizes = family.sizes(read_config(HF))
  mt = goldens.restore(goldens.items(FAMILY, "unscan"))
  hf = tensors(HF)
  for suffix, wi in (("", "wi_{}"), ("_bias", "wi_{}_bias")):
    fused = hf[f"model.layers.2.mlp.experts.gate_up_proj{suffix}"]
    params = [family.param("decoder/{layers}/GptOssMlp/" + wi.format(i)) for i in (0, 1)]
    for i, param in enumerate(params):
      want = mt["params/params/decoder/layers_2/GptOssMlp/" + wi.format(i)]
      assert goldens.same_bits(np.ascontiguousarray(fused[..., i::2]), want)
      assert goldens.same_bits(np.ascontiguousarray(hf_to_maxtext([fused], param, sizes)), want)
    assert not goldens.same_bits(np.ascontiguousarray(fused[..., :sizes["moe_mlp"]]), mt[
        "params/params/decoder/layers_2/GptOssMlp/wi_0" + suffix])
    back = maxtext_to_hf([mt[f"params/params/decoder/layers_2/GptOssMlp/{wi.format(i)}"] for i in (1, 0)],
                         params[::-1], sizes)
    assert goldens.same_bits(np.ascontiguousarray(back), fused)


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_to_maxtext_is_bit_identical_and_back_gives_the_golden(tmp_path, layout):
  _, items, _ = to_maxtext(HF, tmp_path / "mt", f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items(FAMILY, layout)))
  plan, _ = to_hf(goldens.items(FAMILY, layout), tmp_path / "hf", hf_model_path=HF)
  assert plan.scan_layers == (layout == "scan")
  assert_same_model(tensors(tmp_path / "hf"), tensors(HF), FAMILY)


def test_detected_from_config_and_model_name_must_agree():
  config = read_config(HF)
  assert detect_family(config).name == FAMILY
  assert detect_family(config, "gpt-oss-20b").name == FAMILY
  with pytest.raises(ConversionError, match="gpt-oss"):
    detect_family(config, "qwen3-8b")


def _halves() -> models.Family:
  """The spec with gate/up read as concatenated halves instead of interleaved."""
  family = models.BY_NAME[FAMILY]
  params = tuple(dataclasses.replace(p, hf_axes=p.hf_axes.replace("(moe_mlp two)", "(two moe_mlp)"))
                 for p in family.params)
  return dataclasses.replace(family, params=params)


def test_logit_checker_fails_on_halves(tmp_path, monkeypatch, capsys):
  """The goldens pass the checker with KL 0 (conformance); reading gate/up as halves must fail it."""
  broken = _halves()
  with monkeypatch.context() as m:
    m.setitem(models.BY_NAME, FAMILY, broken)
    m.setitem(models.BY_ARCHITECTURE, broken.architectures[0], broken)
    _, items, _ = to_maxtext(HF, tmp_path)
  assert check(items, FAMILY, SHORT) == 1
  out = capsys.readouterr().out
  assert float(out.split("FAIL: max per-token KL ")[1].split()[0]) > 1.0, out[-300:]
