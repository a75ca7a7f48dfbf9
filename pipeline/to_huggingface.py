"""The to_huggingface command: a MaxText Orbax checkpoint -> HF safetensors.

  python -m pipeline.to_huggingface --help

The job itself is pipeline/to_huggingface_job.py, which the batch runner and the templates share.
"""
import sys

from pipeline import cli, to_huggingface_job

if __name__ == "__main__":
  sys.exit(cli.run_main(to_huggingface_job.main))
