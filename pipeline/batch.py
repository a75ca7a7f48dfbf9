"""Scheduled batch conversions: run a list of conversions, skipping each whose output is up to date.

  python -m pipeline.batch jobs.yaml [--flag=value ...]

jobs.yaml (local or gs://):

  defaults: [--runner=DataflowRunner, --project=my-project, --region=us-central1]   # optional
  jobs:
    - name: llama-8b                       # optional
      direction: to_maxtext                # or to_huggingface
      source: gs://b/hf/Llama-3.1-8B       # --hf_model_path, or load_parameters_path for to_huggingface
      destination: gs://b/maxtext/llama-8b # base_output_directory
      options: [model_name=llama3.1-8b, scan_layers=true, --save_dtype=bfloat16]

`options` and `defaults` use the CLIs' vocabulary (MaxText key=value words and --flags, Beam's
included); a job's own options win over the command line's flags, which win over `defaults`.

A job is skipped when its output is committed, its ckptflow_manifest.json records the same options
and direction, and every source file it records still has the same fingerprint (size and mtime;
size, etag and generation on GCS). Anything else is converted again, one job after another (on
Dataflow each is submitted and the next follows at once). An existing output is overwritten: an
incomplete one has no manifest yet, so nothing proves what its slices were made from. A job whose
options include --resume finishes an incomplete output instead. One failing job does not stop the
others; the exit status is 1 if any failed.

Two jobs with one destination (or one inside the other) are refused before any job starts. A job
whose destination another conversion holds (a previous schedule's job still running, here or on
Dataflow) is skipped as busy; if that holder provably died, the job fails with the one line that
says to add --resume or --overwrite to its options (only those take over a dead run's lock).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the imports: it may restart the process
  from pipeline import hugepages
  hugepages.use()

import os
import time
from typing import Any, Sequence

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, destination, runner, to_huggingface_job, to_maxtext_job, up_to_date
from transforms.errors import ConversionError
from pipeline.up_to_date import Decision, Job, output_state
from transforms import storage

COMMANDS = {"to_maxtext": to_maxtext_job, "to_huggingface": to_huggingface_job}
SOURCE_OPTION = {"to_maxtext": "hf_model_path", "to_huggingface": "load_parameters_path"}
JOB_KEYS = ("name", "direction", "source", "destination", "options")


def _words(value: Any, where: str) -> list[str]:
  if value is None:
    return []
  if not isinstance(value, list) or not all(isinstance(w, (str, int, float, bool)) for w in value):
    raise ConversionError(f"{where}: expected a list of key=value / --flag=value words")
  return [str(w) for w in value]


def _translate(words: list[str], direction: str, where: str) -> list[str]:
  flags, notes = cli.translate(words, COMMANDS[direction].MAXTEXT_KEYS, direction)
  cli.check_flags(flags, where)
  for note in notes:
    print(f"note: {where}: {note}", file=sys.stderr)
  return flags


def load_jobs(path: str, extra_flags: Sequence[str] = ()) -> list[Job]:
  """Parses and checks the whole file (and the command line's flags) before anything runs."""
  cli.check_flags(extra_flags, "command line")
  try:
    spec = yaml.safe_load(storage.read_text(path))
  except yaml.YAMLError as e:
    raise ConversionError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
  if not isinstance(spec, dict) or not isinstance(spec.get("jobs"), list) or not spec["jobs"]:
    raise ConversionError(f"{path}: expected a mapping with a non-empty 'jobs:' list")
  unknown = sorted(set(spec) - {"defaults", "jobs"})
  if unknown:
    raise ConversionError(f"{path}: unknown key {unknown[0]!r}; the keys are defaults and jobs")
  defaults = _words(spec.get("defaults"), f"{path}: defaults")
  jobs = []
  for i, entry in enumerate(spec["jobs"], 1):
    where = f"{path}: job {i}"
    if not isinstance(entry, dict):
      raise ConversionError(f"{where}: expected a mapping with direction, source, destination, options")
    unknown = sorted(set(entry) - set(JOB_KEYS))
    if unknown:
      raise ConversionError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(JOB_KEYS)}")
    direction = entry.get("direction")
    if direction not in COMMANDS:
      raise ConversionError(f"{where}: direction must be to_maxtext or to_huggingface, not {direction!r}")
    source, destination = entry.get("source"), entry.get("destination")
    if not isinstance(source, str) or not isinstance(destination, str) or not source or not destination:
      raise ConversionError(f"{where}: source and destination are required paths")
    name = str(entry.get("name") or f"{direction} {source}")
    where = f"{path}: job {i} ({name})"
    options = _translate(_words(entry.get("options"), where), direction, where)
    for flag in (SOURCE_OPTION[direction], "base_output_directory"):
      if any(f.startswith(f"--{flag}=") for f in options):
        raise ConversionError(f"{where}: {flag} comes from source/destination; drop it from options")
    flags = (*_translate(defaults, direction, f"{path}: defaults"), *extra_flags, *options,
             f"--{SOURCE_OPTION[direction]}={source}", f"--base_output_directory={destination}")
    jobs.append(Job(name, direction, source, destination, tuple(flags)))
  check_destinations(path, jobs)
  return jobs


def _normalized(path: str) -> str:
  if not storage.is_local(path):
    return path.rstrip("/")
  return os.path.normpath(os.path.abspath(path))


def check_destinations(path: str, jobs: Sequence[Job]) -> None:
  """Two jobs writing one destination (or one inside the other) would undo each other: refused
  before either starts."""
  seen: list[tuple[str, int, Job]] = []
  for i, job in enumerate(jobs, 1):
    mine = _normalized(job.destination)
    for other, j, first in seen:
      if mine == other or mine.startswith(other + "/") or other.startswith(mine + "/"):
        relation = "both write" if mine == other else "write into each other:"
        raise ConversionError(f"{path}: jobs {j} ({first.name}) and {i} ({job.name}) {relation} "
                              f"{first.destination}" + ("" if mine == other else f" and {job.destination}") +
                              "; give each job its own destination")
    seen.append((mine, i, job))


def decide(job: Job) -> Decision:
  """Skip a destination that another conversion is writing now (its lock is held by a live or
  uncheckable run); otherwise as pipeline.up_to_date decides."""
  locked = destination.lock_state(job.destination)
  if locked is not None and locked[1] is not False:
    return Decision(False, f"busy: being written by {locked[0]}")
  return up_to_date.decide(job)


def run_job(job: Job, decision: Decision) -> str:
  """Converts (or submits) one job; the one-line outcome.

  The --overwrite added here replaces an out-of-date output; only a --resume or --overwrite the job
  itself asks for may take over the lock of a run that died there.
  """
  flags = list(job.flags)
  asked = job.options()
  if output_state(job) != "missing":
    flags.append("--overwrite")  # an explicit --resume in the job's options still wins for an incomplete one
  options = PipelineOptions(flags)
  start = time.monotonic()
  COMMANDS[job.direction].convert(options, flags, take_over=bool(asked.resume or asked.overwrite))
  if not runner.waits(options):
    return f"submitted ({decision.reason})"
  return f"converted in {time.monotonic() - start:.1f}s ({decision.reason})"


def run_all(jobs: Sequence[Job]) -> list[tuple[Job, str, bool]]:
  """(job, outcome, ok) for every job, one after another; a failure does not stop the rest."""
  results = []
  for job in jobs:
    try:
      decision = decide(job)
      if not decision.run:
        outcome = f"skipped ({decision.reason})"
      else:
        print(f"{job.name}: {job.direction} {job.source} -> {job.destination}: {decision.reason}", file=sys.stderr)
        outcome = run_job(job, decision)
      results.append((job, outcome, True))
    except Exception as e:  # pylint: disable=broad-except
      message = str(e) if isinstance(e, ConversionError) else cli.worker_error(e)
      if message is None:
        message = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      results.append((job, f"FAILED: {message}", False))
    print(f"{job.name}: {results[-1][1]}", flush=True)
  return results


def main(argv: list[str]) -> int:
  if argv and argv[0] in ("-h", "--help"):
    print(__doc__)
    return 0
  if not argv or argv[0].startswith("-"):
    raise ConversionError("the jobs file comes first: python -m pipeline.batch jobs.yaml [--flag=value ...] "
                          "(see --help)")
  results = run_all(load_jobs(argv[0], argv[1:]))
  failed = sum(not ok for _, _, ok in results)
  print(f"{len(results)} jobs: {sum('skipped' in o for _, o, ok in results if ok)} skipped, {failed} failed")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
