"""The logit checker passes on correct conversions and fails on deliberately broken ones."""
import dataclasses
import sys

import numpy as np
import pytest

import models
from pipeline import check_logits
from tests import goldens
from tests.test_to_maxtext import convert as to_maxtext
from transforms.tensor_ops import RopeInterleave


def check(items, family, *extra):
  return check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={goldens.path(family, 'hf')}",
                            *extra])


@pytest.mark.parametrize("family", goldens.FAMILIES)
@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_passes_on_maxtexts_own_checkpoints(family, layout, capsys):
  # Mixtral's query is rescaled and rounded to bf16 (by MaxText as by us); on one token of the
  # long prompt that flips a top-2 expert choice (KL 0.095 there, 2e-4 on average). Saved in
  # float32 the same conversion gives KL < 1e-11: see test_float32_conversion_is_exact_for_moe.
  limit = ["--max_kl_div=0.1"] if family == "mixtral" else []
  assert check(goldens.items(family, layout), family, *limit) == 0
  out = capsys.readouterr().out
  assert out.count("top-10 overlap 10/10, Jaccard 1.000, rank agreement 1.000") == 4
  assert "PASS: max per-token KL" in out


def test_float32_conversion_is_exact_for_moe(tmp_path, capsys):
  _, items, _ = to_maxtext(goldens.path("mixtral", "hf"), tmp_path, "--save_dtype=float32")
  assert check(items, "mixtral", "--max_kl_div=1e-9") == 0


def _broken(family_name, kind):
  """The family's spec with one deliberate layout mistake, as a buggy converter would make it."""
  family = models.BY_NAME[family_name]
  params = list(family.params)

  def swap(a, b):
    i = next(i for i, p in enumerate(params) if p.hf.endswith(a))
    j = next(j for j, p in enumerate(params) if p.hf.endswith(b))
    params[i], params[j] = (dataclasses.replace(params[i], hf=params[j].hf),
                            dataclasses.replace(params[j], hf=params[i].hf))
  if kind == "rope left out":
    params = [dataclasses.replace(p, ops=tuple(op for op in p.ops if not isinstance(op, RopeInterleave)))
              for p in params]
  elif kind == "k and v swapped":
    swap("k_proj.weight", "v_proj.weight")
  else:
    swap("gate_proj.weight", "up_proj.weight")
  return dataclasses.replace(family, params=tuple(params))


@pytest.mark.parametrize("family,kind", [("llama3.1", "rope left out"), ("llama3.1", "k and v swapped"),
                                         ("qwen3", "k and v swapped"), ("qwen2.5", "gate and up swapped"),
                                         ("llama3.1", "gate and up swapped")])
def test_fails_on_broken_checkpoints(tmp_path, monkeypatch, family, kind, capsys):
  broken = _broken(family, kind)
  with monkeypatch.context() as m:
    m.setitem(models.BY_NAME, family, broken)
    m.setitem(models.BY_ARCHITECTURE, broken.architectures[0], broken)
    _, items, _ = to_maxtext(goldens.path(family, "hf"), tmp_path)
  assert check(items, family) == 1
  out = capsys.readouterr().out
  worst = float(out.split("FAIL: max per-token KL ")[1].split()[0])
  assert worst > 0.1, out[-300:]


def test_golden_logits_round_trip(tmp_path, capsys):
  golden = tmp_path / "golden.jsonl"
  assert check(goldens.items("qwen3", "scan"), "qwen3", f"--save_golden_logits={golden}") == 0
  first = capsys.readouterr().out
  lines = check_logits.read_golden(str(golden))
  assert [g["prompt"] for g in lines] == list(check_logits.DEFAULT_PROMPTS)
  assert np.asarray(lines[0]["logits"]).shape == (len(lines[0]["tokens"]), 512)
  assert check_logits.main([f"load_parameters_path={goldens.items('qwen3', 'unscan')}",
                            f"--hf_model_path={goldens.path('qwen3', 'hf')}", "--run_hf_model=false",
                            f"--golden_logits_path={golden}"]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == first.splitlines()[-1]


def test_metrics():
  ref = np.log(np.array([[0.5, 0.25, 0.25]]))
  assert check_logits.kl_divergence(ref, ref)[0] == pytest.approx(0.0, abs=1e-12)
  ours = np.log(np.array([[0.25, 0.5, 0.25]]))
  assert check_logits.kl_divergence(ref, ours)[0] == pytest.approx(0.25 * np.log(2.0))
  c = check_logits.compare("p", ref, ours, 2)
  assert c.top_ref[0][0] == 0 and c.top_ours[0][0] == 1
  assert c.overlap == 2 and c.jaccard == 1.0 and c.rank_agreement == 0.0


@pytest.fixture
def maxtext_stand_in(monkeypatch):
  monkeypatch.syspath_prepend(str(goldens.REPO) + "/tests/maxtext_stand_in")
  import maxtext  # pylint: disable=import-outside-toplevel
  yield maxtext
  for name in [n for n in sys.modules if n == "maxtext" or n.startswith("maxtext.")]:
    del sys.modules[name]


@pytest.mark.parametrize("kind", [None, "k and v swapped"])
def test_maxtext_backend_through_a_stand_in(tmp_path, monkeypatch, capsys, kind, maxtext_stand_in):
  """maxtext needs Python >= 3.12: a stand-in package checks how the backend drives MaxText's API."""
  maxtext = maxtext_stand_in
  maxtext.CALLS.clear()
  items = goldens.items("qwen3", "scan")
  if kind:
    broken = _broken("qwen3", kind)
    with monkeypatch.context() as m:
      m.setitem(models.BY_NAME, "qwen3", broken)
      m.setitem(models.BY_ARCHITECTURE, broken.architectures[0], broken)
      _, items, _ = to_maxtext(goldens.path("qwen3", "hf"), tmp_path)
  monkeypatch.setenv("STAND_IN_HF_CONFIG", goldens.path("qwen3", "hf"))
  rc = check(items, "qwen3", "model_name=qwen3-0.6b", "per_device_batch_size=2")
  out = capsys.readouterr().out
  assert "converted model: maxtext backend" in out
  assert rc == (1 if kind else 0), out[-300:]
  (_, argv), *applies = maxtext.CALLS
  assert argv[1].endswith("maxtext/configs/base.yml")
  assert f"load_parameters_path={items}" in argv and "model_name=qwen3-0.6b" in argv
  assert "max_prefill_predict_length=512" in argv
  assert [a for a, _ in applies] == ["apply"] * 4 and applies[0][1][0] == 2


def test_without_maxtext_the_ckptflow_backend_runs(capsys):
  assert check_logits.choose_backend("auto") == "ckptflow"
  assert check(goldens.items("qwen2.5", "scan"), "qwen2.5", "--backend=ckptflow") == 0
  assert "converted model: ckptflow backend" in capsys.readouterr().out
  with pytest.raises(check_logits.ConversionError, match="--backend=maxtext needs the maxtext package"):
    check_logits.choose_backend("maxtext")


def test_maxtexts_checker_flags_mean_what_they_mean_there(tmp_path, capsys):
  items = goldens.items("qwen3", "scan")
  out_path = tmp_path / "out.jsonl"
  assert check(items, "qwen3", "--atol=0.5", "--rtol=0.01", "--token_size=2",
               f"--output_logits_path={out_path}") == 0
  out = capsys.readouterr().out
  assert "allclose(rtol=0.01, atol=0.5) True" in out and "(limit none)" in out
  assert "(2 tokens)" in out  # only the first --token_size positions are compared
  lines = [l for l in out_path.read_text().splitlines() if l]
  assert len(lines) == 4
  with open(out_path) as f:
    first = __import__("json").loads(f.readline())
  assert np.asarray(first["mt_logits"]).shape == np.asarray(first["hf_logits"]).shape == (len(first["tokens"]), 512)
  # An atol nothing meets fails; a max_kl_div of 0 cannot be met either (KL must be below it).
  assert check(items, "qwen3", "--atol=0", "--rtol=0", "--max_kl_div=1") == (0 if _exact(first) else 1)
  assert check(items, "qwen3", "--max_kl_div=0") == 1
  assert "FAIL: max per-token KL" in capsys.readouterr().out


def _exact(record):
  return np.array_equal(np.asarray(record["mt_logits"]), np.asarray(record["hf_logits"]))


def test_golden_logits_from_npz_and_output_logits_usable_as_goldens(tmp_path, capsys):
  items = goldens.items("qwen3", "unscan")
  out_path = tmp_path / "ours.jsonl"
  golden = tmp_path / "golden.jsonl"
  assert check(items, "qwen3", f"--save_golden_logits={golden}") == 0
  points = check_logits.read_golden(str(golden))
  npz = tmp_path / "golden.npz"
  capsys.readouterr()
  np.savez(npz, **{f"{k}_{i}": np.asarray(p[k]) for i, p in enumerate(points) for k in ("tokens", "logits", "prompt")})
  assert check(items, "qwen3", f"--golden_logits_path={npz}", f"--output_logits_path={out_path}",
               "--max_kl_div=1e-3") == 0
  assert capsys.readouterr().out.count("top-10 overlap 10/10") == 4
  # What the converted model gave, saved as MaxText's checker saves it against goldens, is itself a golden file.
  again = check_logits.read_golden(str(out_path))
  assert [p["tokens"] for p in again] == [p["tokens"] for p in points]
  assert check(items, "qwen3", f"--golden_logits_path={out_path}", "--atol=0", "--rtol=0") == 0


def test_pickled_goldens_are_refused_unread(tmp_path):
  pickled = tmp_path / "golden.pkl"
  pickled.write_bytes(b"not read")
  with pytest.raises(check_logits.ConversionError, match="pickle files are not read"):
    check(goldens.items("qwen3", "scan"), "qwen3", f"--golden_logits_path={pickled}")


def test_synthetic_ids_are_said_plainly_and_tokenizer_path_is_honoured(tmp_path, capsys):
  import shutil  # pylint: disable=import-outside-toplevel
  bare = tmp_path / "bare"
  goldens.copy_hf("qwen3", bare)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (bare / name).unlink()
  items = goldens.items("qwen3", "scan")
  assert check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={bare}"]) == 0
  captured = capsys.readouterr()
  notes = [line for line in captured.err.splitlines() if "synthetic token ids" in line]
  assert len(notes) == 1 and notes[0].startswith("note: no tokenizer")
  assert "I love to" not in captured.out and "prompt 'synthetic ids #1' (512 tokens)" in captured.out
  tokenizer = tmp_path / "tok"
  tokenizer.mkdir()
  shutil.copy(goldens.path("qwen3", "hf", "tokenizer.json"), tokenizer)
  shutil.copy(goldens.path("qwen3", "hf", "tokenizer_config.json"), tokenizer)
  assert check_logits.main([f"load_parameters_path={items}", f"--hf_model_path={bare}",
                            f"tokenizer_path={tokenizer}"]) == 0
  captured = capsys.readouterr()
  assert "synthetic" not in captured.err + captured.out and "prompt 'I love to'" in captured.out


def test_a_layout_mismatch_is_reported_before_any_model_is_loaded(monkeypatch):
  def never(*args, **kwargs):
    raise AssertionError("a model was loaded")
  monkeypatch.setattr(check_logits, "reference_logits", never)
  monkeypatch.setattr(check_logits, "tokenize", never)
  with pytest.raises(check_logits.ConversionError, match="holds scanned layers"):
    check(goldens.items("qwen3", "scan"), "qwen3", "scan_layers=false")
