"""The final line of both directions: slices or tensors, bytes read, bytes stored on disk, wall time."""
import os
import re

from pipeline import runner, to_huggingface_job, to_maxtext_job
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS


def on_disk(root):
  return sum(os.path.getsize(os.path.join(base, n)) for base, _, names in os.walk(root) for n in names)


def test_both_directions_report_what_the_written_files_take(tmp_path, capsys):
  mt = tmp_path / "mt"
  assert to_maxtext_job.main([f"base_output_directory={mt}", f"--hf_model_path={goldens.path('qwen3', 'hf')}",
                              "scan_layers=true", "--progress=false", *IN_PROCESS]) == 0
  err = capsys.readouterr().err
  plan = to_maxtext_job.plan_from_options(to_maxtext_job.PipelineOptions(
      [f"--hf_model_path={goldens.path('qwen3', 'hf')}"]).view_as(to_maxtext_job.ConversionOptions))
  slices = len(plan.tasks)
  line = re.search(r"qwen3: (\d+) slices, (.*) read, (.*) stored on disk in ([\d.]+)s", err)
  assert line, err
  assert int(line.group(1)) == slices
  assert line.group(3) == runner.human_bytes(on_disk(mt / "0"))
  assert line.group(2) == runner.human_bytes(plan.source_bytes)
  hf = tmp_path / "hf"
  assert to_huggingface_job.main([f"load_parameters_path={mt / '0' / 'items'}", f"base_output_directory={hf}",
                                  "--progress=false", *IN_PROCESS]) == 0
  err = capsys.readouterr().err
  line = re.search(r"qwen3 \(scanned\): (\d+) tensors, .* read, (.*) stored on disk in", err)
  assert line, err
  assert line.group(2) == runner.human_bytes(on_disk(hf))
