"""The pre-flight report of a conversion, from headers and metadata only: nothing is converted.

  python -m pipeline.plan [to_maxtext|to_huggingface] <the arguments of that command>

Without a direction: MaxText -> HF when load_parameters_path= is given, else to MaxText (from an HF
model, or from a training state with load_full_state_path=). A MaxText checkpoint re-laid out into
MaxText (to_maxtext load_parameters_path=...) needs the word to_maxtext. See pipeline/preflight.py.
"""
import sys
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, preflight, to_huggingface_job, to_maxtext_job
from pipeline.options import ConversionOptions

DIRECTIONS = ("to_maxtext", "to_huggingface")


def main(argv: Sequence[str]) -> int:
  direction = argv[0] if argv and argv[0] in DIRECTIONS else None
  keys = tuple(dict.fromkeys(to_maxtext_job.MAXTEXT_KEYS + to_huggingface_job.MAXTEXT_KEYS))
  options = tuple(dict.fromkeys(to_maxtext_job.OPTIONS + to_huggingface_job.OPTIONS))
  flags = cli.start(argv[1:] if direction else argv, "python -m pipeline.plan", __doc__, keys, "plan", options)
  if flags is None:
    return 0
  conv = PipelineOptions(flags).view_as(ConversionOptions)
  if direction is None:
    direction = "to_huggingface" if conv.load_parameters_path else "to_maxtext"
  if direction == "to_huggingface":
    report = to_huggingface_job.preflight_report(conv)
  else:
    report = preflight.to_maxtext_preflight(to_maxtext_job.plan_from_options(conv))
  preflight.print_report(report, conv)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
