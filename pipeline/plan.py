"""The pre-flight report of a conversion, from headers and metadata only: nothing is converted.

  python -m pipeline.plan <the arguments of to_maxtext or to_huggingface>

MaxText -> HF when load_parameters_path= is given, else HF -> MaxText (see pipeline/preflight.py).
"""
import sys
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, preflight, to_huggingface_job, to_maxtext_job
from pipeline.options import ConversionOptions


def main(argv: Sequence[str]) -> int:
  keys = tuple(dict.fromkeys(to_maxtext_job.MAXTEXT_KEYS + to_huggingface_job.MAXTEXT_KEYS))
  flags = cli.start(argv, "python -m pipeline.plan", __doc__, keys)
  if flags is None:
    return 0
  conv = PipelineOptions(flags).view_as(ConversionOptions)
  if conv.load_parameters_path:
    report = to_huggingface_job.preflight_report(conv)
  else:
    report = preflight.to_maxtext_preflight(to_maxtext_job.plan_from_options(conv))
  preflight.print_report(report, conv)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
