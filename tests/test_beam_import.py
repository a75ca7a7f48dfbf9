"""Beam's cloud I/O stays out of a local job's start, and comes back for a remote runner.

Each check runs in a new interpreter: this suite's own process may have loaded those modules by now.
"""
import subprocess
import sys
import textwrap

from tests import goldens


def in_new_python(code: str) -> str:
  done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=goldens.REPO, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  return done.stdout.strip()


def test_the_command_lines_start_without_beams_cloud_io_and_a_remote_runner_gets_it_back():
  out = in_new_python("""
      import sys
      import pipeline.cli, pipeline.to_maxtext_job, pipeline.to_huggingface_job
      from apache_beam.io.filesystems import FileSystems
      from pipeline import beam_import
      cloud = ("apache_beam.io.gcp.gcsio", "apache_beam.io.gcp.bigquery", "google.cloud.storage", "google.cloud.bigquery")
      print(sorted(name for name in cloud if name in sys.modules))
      print([type(finder).__name__ for finder in sys.meta_path if "beam_import" in type(finder).__module__])
      try:
        FileSystems.get_filesystem("gs://bucket/x")
        print("gs:// before")
      except ValueError:
        print("no gs:// before")
      beam_import.load_remote_io()
      print(type(FileSystems.get_filesystem("gs://bucket/x")).__name__)
      from apache_beam.runners.dataflow import dataflow_runner
      print(dataflow_runner.dataflow_api.JobState.JOB_STATE_DONE.name)
      import apache_beam.io.textio, apache_beam.io.gcp.pubsub
      print("ok")
  """).splitlines()
  assert out == ["[]", "[]", "no gs:// before", "GCSFileSystem", "JOB_STATE_DONE", "ok"]


def test_a_process_that_imported_beam_first_keeps_all_of_it():
  out = in_new_python("""
      import sys
      import apache_beam
      n = len(sys.meta_path)
      import pipeline
      print("apache_beam.io.gcp.gcsio" in sys.modules, hasattr(apache_beam.io, "ReadFromBigQuery"), len(sys.meta_path) == n)
  """)
  assert out == "True True True"
