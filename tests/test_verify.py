"""pipeline.verify: slice-by-slice re-check of a conversion against its source."""
import dataclasses

import pytest

import models
from pipeline import verify
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS
from tests.test_to_maxtext import convert as to_maxtext


def run(items, family, *extra):
  return verify.main([f"load_parameters_path={items}", f"--hf_model_path={goldens.path(family, 'hf')}",
                      *IN_PROCESS, "--progress=false", *extra])


@pytest.mark.parametrize("family,layout", [("llama3.1", "scan"), ("gpt-oss", "unscan"), ("deepseek3", "scan"),
                                           ("gemma3", "scan")])
def test_maxtexts_own_checkpoints_verify_bit_identical(family, layout, capsys):
  assert run(goldens.items(family, layout), family) == 0
  last = capsys.readouterr().out.splitlines()[-1]
  assert last.startswith(f"{family}: verified ") and last.endswith(" bit-identical")


def test_a_wrong_checkpoint_fails_and_names_the_arrays(tmp_path, monkeypatch, capsys):
  family = models.BY_NAME["llama3.1"]
  broken = dataclasses.replace(family, params=tuple(dataclasses.replace(p, ops=()) if "query" in p.mt else p
                                                    for p in family.params))
  with monkeypatch.context() as m:
    m.setitem(models.BY_NAME, "llama3.1", broken)
    m.setitem(models.BY_ARCHITECTURE, "LlamaForCausalLM", broken)
    _, items, _ = to_maxtext(goldens.path("llama3.1", "hf"), tmp_path)
  assert run(items, "llama3.1") == 1
  out = capsys.readouterr().out
  assert "MISMATCH: params/params/decoder/layers/self_attention/query/kernel (3 slices)" in out
  assert "3 MISMATCH" in out.splitlines()[-1]


def test_a_checkpoint_rounded_by_another_converter_is_within_one_rounding():
  stored = verify.np.array([1.0, 2.0, 3.0], verify.np.float32)
  assert verify.compare(stored, stored.copy()) == verify.EXACT
  assert verify.compare(stored, verify.np.nextafter(stored, verify.np.float32(10))) == verify.ROUNDED
  assert verify.compare(stored, stored * 1.01) == verify.MISMATCH
