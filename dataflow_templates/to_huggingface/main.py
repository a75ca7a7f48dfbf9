"""The flex template launcher's program (FLEX_TEMPLATE_PYTHON_PY_FILE): python -m pipeline.to_huggingface.

The launcher passes the template's parameters and Dataflow's options (--runner, --project,
--region, --temp_location, ...) as --flags; the conversion submits its job and returns.
"""
import sys

from pipeline import cli, to_huggingface_job

if __name__ == "__main__":
  sys.exit(cli.run_main(to_huggingface_job.main))
