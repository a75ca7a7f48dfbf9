"""MaxText training runs: a TrainState gives MaxText's own export, run directories pick their step, --all_steps."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

import models
from pipeline import cli, to_huggingface_job
from pipeline.planner import family_sizes, placements, with_options
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS
from tests.test_lora import tensors, to_hf, within_one_rounding
from transforms.convert import maxtext_to_hf
from transforms.errors import ConversionError
from transforms.orbax_reader import CheckpointReader

TRAIN = os.path.join(goldens.GOLDENS_TRAIN, "llama3.1-train-scan-nnx")
RUN = os.path.join(TRAIN, "run", "llama3.1-scan-nnx")
START = os.path.join(TRAIN, "hf_start")


def step_items(run: str, step: int) -> str:
  return os.path.join(run, "checkpoints", str(step), "items")


def correctly_rounded(items: str, name: str, dtype) -> np.ndarray:
  """The HF tensor of a float32 MaxText array computed in float64 from the stored values, rounded once."""
  family = models.BY_NAME["llama3.1"]
  with open(os.path.join(START, "config.json")) as f:
    config = with_options(json.load(f), False)
  sizes = family_sizes(family, config, "test")
  place = next(p for p in placements(family, config, sizes, True) if p.hf_name == name)
  stored = CheckpointReader(items).read(place.array_path, tuple(
      slice(None) if a not in place.stacked_axes else dict(place.index)[a] for a in range(len(place.array_shape))))
  return maxtext_to_hf([stored.astype(np.float64)], [place.param], sizes).astype(dtype)


@pytest.mark.parametrize("dtype,golden", [("bfloat16", "hf_from_maxtext"), ("float32", "hf_from_maxtext_f32")])
def test_training_state_gives_maxtexts_own_export(tmp_path, dtype, golden):
  """A 3-step NNX TrainState (float32 params, opt_state, nnx_aux rngs): MaxText's own to_huggingface output, except
  the query, which MaxText rounds twice and we once (within one ulp of MaxText's, equal to the correctly rounded)."""
  items = step_items(RUN, 2)
  to_hf(tmp_path, f"--load_parameters_path={items}", f"--weight_dtype={dtype}", hf_model_path=START)
  ours, theirs = tensors(str(tmp_path)), tensors(os.path.join(TRAIN, golden))
  assert sorted(ours) == sorted(theirs)
  eps = float(ml_dtypes.finfo(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32).eps)
  numpy_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
  queries = 0
  for name, value in theirs.items():
    if goldens.same_bits(ours[name], value):
      continue
    assert name.endswith("q_proj.weight"), f"{name} differs from MaxText's export"
    assert within_one_rounding(ours[name], value, eps), name
    assert goldens.same_bits(ours[name], correctly_rounded(items, name, numpy_dtype)), name
    queries += 1
  if dtype == "bfloat16":
    assert queries == 3  # every layer's query: MaxText rounds to bf16 twice


def _copy_run(tmp_path) -> str:
  run = tmp_path / "run"
  shutil.copytree(RUN, run)
  for root, dirs, files in os.walk(run):
    for name in dirs + files:
      os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
  # A step still being written (or whose writer died): no commit marker. Never picked.
  shutil.copytree(run / "checkpoints" / "2", run / "checkpoints" / "5")
  for marker in (run / "checkpoints" / "5" / "commit_success.txt", run / "checkpoints" / "5" / "items" /
                 "commit_success.txt"):
    os.remove(marker)
  os.makedirs(run / "checkpoints" / "7.orbax-checkpoint-tmp-123")  # Orbax's temporary directory: not a step
  return str(run)


def test_run_directory_means_its_latest_committed_step(tmp_path):
  run = _copy_run(tmp_path)
  for given in (run, os.path.join(run, "checkpoints"), os.path.join(run, "checkpoints") + "/"):
    plan, _ = to_hf(tmp_path / "out", f"--load_parameters_path={given}", "--overwrite", hf_model_path=START)
    assert plan.items == step_items(run, 2)
  with open(tmp_path / "out" / "ckptflow_manifest.json") as f:
    assert json.load(f)["options"]["load_parameters_path"] == step_items(run, 2)  # what was converted
  plan, _ = to_hf(tmp_path / "s0", f"--load_parameters_path={run}/checkpoints", "--step=0", hf_model_path=START)
  assert plan.items == step_items(run, 0)
  plan, _ = to_hf(tmp_path / "sd", f"--load_parameters_path={run}/checkpoints/0", hf_model_path=START)
  assert plan.items == step_items(run, 0)
  with pytest.raises(ConversionError, match=r"no committed step 5; committed steps: 0, 2"):
    to_hf(tmp_path / "s5", f"--load_parameters_path={run}/checkpoints", "--step=5", hf_model_path=START)
  with pytest.raises(ConversionError, match=r"is one checkpoint; --step=2 applies to a run's checkpoints/"):
    to_hf(tmp_path / "x", f"--load_parameters_path={step_items(run, 0)}", "--step=2", hf_model_path=START)
  with pytest.raises(ConversionError, match=r"not a MaxText checkpoint \(no _METADATA\), step directory"):
    to_hf(tmp_path / "y", f"--load_parameters_path={tmp_path}", hf_model_path=START)


def _all_steps(run: str, out) -> list[str]:
  argv = [f"load_parameters_path={run}/checkpoints", f"base_output_directory={out}", "--all_steps",
          f"--hf_model_path={START}", "--progress=false", *IN_PROCESS]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
    assert cli.run_main(to_huggingface_job.main, argv) == 0
  return [line for line in printed.getvalue().splitlines() if line.startswith("step ")]


def test_all_steps_converts_every_committed_step_once(tmp_path):
  run = _copy_run(tmp_path)
  out = tmp_path / "hf"
  first = _all_steps(run, out)
  assert [line.split(":")[0] for line in first] == ["step 0", "step 2"] and all("converted" in l for l in first)
  assert sorted(os.listdir(out)) == ["0", "2"]
  to_hf(tmp_path / "direct", f"--load_parameters_path={step_items(run, 2)}", hf_model_path=START)
  direct, step2 = tensors(str(tmp_path / "direct")), tensors(str(out / "2"))
  assert all(goldens.same_bits(step2[n], v) for n, v in direct.items())
  assert _all_steps(run, out) == ["step 0: skipped (up to date)", "step 2: skipped (up to date)"]
  # Step 0 saved again (its metadata rewritten) is converted again; step 2 is still up to date.
  metadata = os.path.join(run, "checkpoints", "0", "_CHECKPOINT_METADATA")
  with open(metadata) as f:
    text = f.read()
  os.remove(metadata)
  with open(metadata, "w") as f:
    f.write(text + " ")
  again = _all_steps(run, out)
  assert again[0].startswith("step 0: converted") and "changed" in again[0]
  assert again[1] == "step 2: skipped (up to date)"
  # The new step lands once it is committed.
  for marker in ("commit_success.txt", os.path.join("items", "commit_success.txt")):
    shutil.copy(os.path.join(run, "checkpoints", "2", marker), os.path.join(run, "checkpoints", "5", marker))
  assert _all_steps(run, out)[-1].startswith("step 5: converted")
