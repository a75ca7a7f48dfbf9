"""The to_maxtext command: HF safetensors -> a MaxText Orbax checkpoint.

  python -m pipeline.to_maxtext --help

The job itself is pipeline/to_maxtext_job.py, which the batch runner and the templates share.
"""
import sys

if __name__ == "__main__":  # before the imports: it may restart the process
  from pipeline import hugepages
  hugepages.use()

from pipeline import cli, to_maxtext_job  # pylint: disable=wrong-import-position

if __name__ == "__main__":
  sys.exit(cli.run_main(to_maxtext_job.main))
