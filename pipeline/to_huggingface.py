"""The to_huggingface command: a MaxText Orbax checkpoint -> HF safetensors.

  python -m pipeline.to_huggingface --help

The job itself is pipeline/to_huggingface_job.py, which the batch runner and the templates share.
"""
import sys

if __name__ == "__main__":  # before the imports: it may restart the process
  from pipeline import hugepages
  hugepages.use()

from pipeline import cli, to_huggingface_job  # pylint: disable=wrong-import-position

if __name__ == "__main__":
  sys.exit(cli.run_main(to_huggingface_job.main))
