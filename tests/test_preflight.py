"""The pre-flight plan: `python -m pipeline.plan`, --dry_run on both directions, big header sets."""
import dataclasses
import os
import subprocess
import sys

import pytest

from pipeline import preflight
from pipeline.planner import plan_to_maxtext
from pipeline.preflight import to_maxtext_preflight
from pipeline.runner import human_bytes
from tests import goldens
from transforms.safetensors_io import list_checkpoint

MAKE_MODEL = goldens.MAKE_MODEL


def run(*args):
  return subprocess.run([sys.executable, *args], cwd=goldens.REPO, capture_output=True, text=True, timeout=300)


def test_plan_command_reports_from_headers_and_dry_run_writes_nothing(tmp_path):
  hf = goldens.path("llama3.1", "hf")
  out = tmp_path / "out"
  planned = run("-m", "pipeline.plan", f"--hf_model_path={hf}", f"base_output_directory={out}",
                "--max_element_size=8KB", "--workers=1,4")
  assert planned.returncode == 0, planned.stderr
  refs = list_checkpoint(hf)
  text = planned.stdout
  assert f"tensors            {len(refs)}" in text
  plan = plan_to_maxtext(hf, split_bytes=8000)
  assert f"elements           {len(plan.tasks)}" in text and len(plan.tasks) > len(refs)
  assert "with 1 worker(s) at 300 MB/s each on the local runner\n" in text
  cpus = os.cpu_count()
  assert (f"with 4 worker(s) at 300 MB/s each on the local runner, sharing {cpus} CPU(s)" in text) == (cpus < 4)
  assert "leaves out" not in text
  remote = run("-m", "pipeline.plan", f"--hf_model_path={hf}", "base_output_directory=gs://b/out",
               "--max_element_size=8KB", "--workers=1,4", "--runner=DataflowRunner", "--worker_mbps=50")
  assert remote.returncode == 0, remote.stderr
  assert "with 4 worker(s) at 50 MB/s each on DataflowRunner\n" in remote.stdout
  assert remote.stdout.rstrip().endswith("(the estimate leaves out the minutes a remote runner takes to start its "
                                         "workers' machines)")
  dry = run("-m", "pipeline.to_maxtext", f"--hf_model_path={hf}", f"base_output_directory={out}",
            "--max_element_size=8KB", "--workers=1,4", "--dry_run")
  assert dry.returncode == 0 and dry.stdout == text
  assert not out.exists()


def test_dry_run_of_maxtext_to_hf(tmp_path):
  out = tmp_path / "hf"
  dry = run("-m", "pipeline.to_huggingface", f"load_parameters_path={goldens.items('qwen3', 'scan')}",
            f"base_output_directory={out}", f"--hf_model_path={goldens.path('qwen3', 'hf')}", "--dry_run")
  assert dry.returncode == 0, dry.stderr
  assert "to_huggingface qwen3" in dry.stdout and "1 safetensors files" in dry.stdout
  assert f"tensors            {len(list_checkpoint(goldens.path('qwen3', 'hf')))}" in dry.stdout
  assert not out.exists()


def test_real_sized_header_set_plans_with_bounded_elements(tmp_path):
  """DeepSeek-V3's real tensor shapes (4 layers, 16 experts), holes instead of data."""
  made = run(MAKE_MODEL, "--preset", "deepseek3-671b", "--layers", "4", "--experts", "16", "--sparse",
             "--out", str(tmp_path / "ds3"))
  assert made.returncode == 0, made.stderr
  plan = plan_to_maxtext(str(tmp_path / "ds3"))
  report = to_maxtext_preflight(plan)
  assert report.read_bytes == plan.source_bytes == sum(r.nbytes for n, r in list_checkpoint(str(tmp_path / "ds3"))
                                                       .items() if n not in plan.unused)
  # The 1.85 GB embedding and lm_head and the dense 264 MB MLP weights are split at 256 MiB.
  assert report.elements > report.tensors and report.largest_element_bytes <= 256 * 2**20
  assert report.worker_memory_bytes < 2 * 2**30
  # Start-up and the final flush do not shrink with more workers; the work does: on a remote runner
  # each worker is a machine of its own, locally a worker beyond the CPUs adds nothing.
  remote = dataclasses.replace(preflight.REMOTE, worker_mbps={"to_maxtext": 100.0})
  fixed = remote.start_seconds + report.written_bytes / remote.flush_bytes_per_second
  one, eight = report.estimated_seconds(1, remote) - fixed, report.estimated_seconds(8, remote) - fixed
  assert one == pytest.approx(report.read_bytes / 100e6) and eight == pytest.approx(one / 8)
  local = dataclasses.replace(preflight.LOCAL, useful_workers=2)
  one, two, eight = (report.estimated_seconds(n, local, 100) - local.start_seconds for n in (1, 2, 8))
  assert one == pytest.approx(report.read_bytes / 100e6) and two == eight == pytest.approx(one / 1.45)


def test_to_huggingface_estimate_is_bounded_by_its_largest_shard(tmp_path):
  """A shard is written by one worker: one shard takes as long with 8 workers as with 1."""
  from pipeline import to_huggingface_job  # pylint: disable=import-outside-toplevel
  plan = to_huggingface_job.plan_from_options(to_huggingface_job.PipelineOptions(
      [f"--load_parameters_path={goldens.items('qwen3', 'scan')}", f"--hf_model_path={goldens.path('qwen3', 'hf')}"]
  ).view_as(to_huggingface_job.ConversionOptions), str(tmp_path))
  report = preflight.to_huggingface_preflight(plan, to_huggingface_job.stored_itemsizes(plan))
  assert len(plan.shards) == 1 and report.largest_unit_bytes == report.read_bytes
  for rates in (preflight.LOCAL, preflight.REMOTE):
    assert report.estimated_seconds(8, rates, 100) == report.estimated_seconds(1, rates, 100)


def test_fp8_header_set_reports_quantized_bytes_in_and_dequantized_out(tmp_path):
  made = run(MAKE_MODEL, "--preset", "deepseek3-671b", "--layers", "4", "--experts", "8", "--sparse", "--fp8",
             "--out", str(tmp_path / "ds3"))
  assert made.returncode == 0, made.stderr
  planned = run("-m", "pipeline.plan", f"--hf_model_path={tmp_path / 'ds3'}", "base_output_directory=gs://b/out")
  assert planned.returncode == 0, planned.stderr
  plan = plan_to_maxtext(str(tmp_path / "ds3"))
  report = to_maxtext_preflight(plan)
  assert report.read_bytes == plan.source_bytes < plan.dequantized_bytes
  (label, text), = report.extra
  assert label == "dequantized" and f"  dequantized        {text}" in planned.stdout
  assert text.startswith(human_bytes(plan.dequantized_bytes))
