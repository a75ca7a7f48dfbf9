"""Running a pipeline: offline local defaults, a progress bar, a metrics summary, and Dataflow submission."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                  StandardOptions, WorkerOptions)

from transforms.errors import ConversionError
from pipeline import beam_import, interrupts
from pipeline.options import ConversionOptions
from transforms import storage
from transforms.dofns import METRICS_NAMESPACE

# Runs locally (worker threads, or processes on request) and never downloads the Prism runner (REFERENCE §4).
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
LOCAL_RUNNERS = {LOCAL_RUNNER, "FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


def with_local_defaults(options: PipelineOptions, flags: Sequence[str]) -> PipelineOptions:
  """No --runner means the offline local runner, one worker per CPU, each a thread of this process.

  Nearly all of a worker's work runs outside the GIL (tensorstore's reads, zstd and writes, numpy's
  copies, file I/O), so threads keep the cores as busy as processes would, without starting a Python
  per CPU or passing elements between processes: the 8B-shaped 4-layer model converts in 9.6 s to
  MaxText on threads against 12.8 s on two processes, 12.4 s against 16.4 s back (docs/performance.md).
  An interrupted run stops its worker threads before it cleans up (transforms/stopping.py), and a
  failing worker's log lines are dropped like a worker process's (one line, or all with --verbose).
  --direct_running_mode=multi_processing still gives processes.

  `flags` are the user's, so explicit --direct_running_mode / --direct_num_workers win.
  """
  standard = options.view_as(StandardOptions)
  if standard.runner is None:
    standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    if not any(f.startswith("--direct_running_mode") for f in flags):
      direct.direct_running_mode = "multi_threading"
    if not any(f.startswith("--direct_num_workers") for f in flags):
      direct.direct_num_workers = os.cpu_count() or 1
  return options


class _QuietLocalWorkers(logging.Filter):
  """Drops the local runner's per-worker warning about Dataflow's semi-persistent directory, and
  (unless --verbose) the tracebacks of failing workers, relayed from a worker process or logged by a
  worker thread: the failure reaches the user as one line (cli.run_main), and --verbose prints the
  whole traceback."""

  def __init__(self):
    super().__init__()
    self.relay_errors = False

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if "No semi_persistent_directory found" in message:
      return False
    if self.relay_errors:
      return True
    if record.name in _WORKER_THREAD_LOGGERS:
      return record.levelno < logging.ERROR
    return not message.startswith(("Worker: severity: ERROR", "Worker: severity: CRITICAL"))


# Where a worker thread's failing element is logged (each time it unwinds a step, then by the bundle)
# before the same exception reaches the driver.
_WORKER_THREAD_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker")
_QUIET_WORKERS = _QuietLocalWorkers()
for _name in ("apache_beam.runners.portability.local_job_service", *_WORKER_THREAD_LOGGERS):
  logging.getLogger(_name).addFilter(_QUIET_WORKERS)


def is_local(options: PipelineOptions) -> bool:
  runner = options.view_as(StandardOptions).runner
  return not isinstance(runner, str) or runner in LOCAL_RUNNERS


def local_workers(options: PipelineOptions) -> int:
  """How many workers (threads or processes) write to this machine's disk at once: the local runner's,
  0 on a remote runner."""
  if not is_local(options):
    return 0
  direct = options.view_as(DirectOptions)
  return 1 if direct.direct_running_mode == "in_memory" else max(1, direct.direct_num_workers or 1)


def runner_name(options: PipelineOptions) -> str:
  """The runner's class name ('DataflowRunner')."""
  runner = options.view_as(StandardOptions).runner
  return (runner if isinstance(runner, str) else type(runner).__name__).rsplit(".", 1)[-1]


def on_dataflow(options: PipelineOptions) -> bool:
  runner = options.view_as(StandardOptions).runner
  name = runner if isinstance(runner, str) else type(runner).__name__
  return name.rsplit(".", 1)[-1] == "DataflowRunner"


def waits(options: PipelineOptions) -> bool:
  """Whether run() blocks until the job ends: always locally, on Dataflow only with --wait.

  A flex template launcher must return once the job is submitted; the commit needs no driver, it
  runs inside the job after the barrier.
  """
  return not on_dataflow(options) or bool(options.view_as(ConversionOptions).wait)


def check_dataflow(options: PipelineOptions, paths: dict[str, str | None]) -> None:
  """On Dataflow, fails in one line before any work: the options a job needs, workers that have
  ckptflow, and no path on the driver's disk (`paths`: flag -> value; gs:// and hf:// are fine),
  which workers cannot see."""
  if not on_dataflow(options):
    return
  gcp = options.view_as(GoogleCloudOptions)
  missing = [f"--{name}" for name in ("project", "region", "temp_location") if not getattr(gcp, name)]
  if missing:
    raise ConversionError(f"--runner=DataflowRunner needs {' '.join(missing)} (e.g. --project=my-project "
                          "--region=us-central1 --temp_location=gs://my-bucket/tmp)")
  for name in ("temp_location", "staging_location"):
    value = getattr(gcp, name)
    if value and not storage.is_gcs(value):
      raise ConversionError(f"--{name}={value}: Dataflow needs a gs:// location")
  setup = options.view_as(SetupOptions)
  if not (options.view_as(WorkerOptions).sdk_container_image or setup.setup_file or setup.extra_packages):
    raise ConversionError("--runner=DataflowRunner: the workers need ckptflow installed; pass "
                          "--sdk_container_image=<the flex template image> (dataflow_templates/README.md) or "
                          "--setup_file=./setup.py")
  for flag, path in paths.items():
    if path and storage.is_local(path):
      raise ConversionError(f"--{flag}={path}: Dataflow workers cannot see this machine's disk; use a gs:// path")


def console_url(options: PipelineOptions, job_id: str) -> str:
  gcp = options.view_as(GoogleCloudOptions)
  return f"https://console.cloud.google.com/dataflow/jobs/{gcp.region}/{job_id}?project={gcp.project}"


class Progress:
  """Counts what local workers append to a file, one `<bytes read> ` record per finished unit (a slice
  going to MaxText, a tensor going to HF): done / total, MB/s and an ETA, on stderr."""

  def __init__(self, total: int, label: str, enabled: bool, unit: str = "slices", total_bytes: int | None = None):
    self.total = total
    self.label = label
    self.unit = unit
    self.total_bytes = total_bytes
    self.enabled = enabled and total > 0
    self.path: str | None = None
    self._stop = threading.Event()

  def __enter__(self) -> "Progress":
    if self.enabled:
      fd, self.path = tempfile.mkstemp(prefix="ckptflow-progress-")
      os.close(fd)
      self._thread = threading.Thread(target=self._watch, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    if self.enabled:
      self._stop.set()
      self._thread.join()
      os.unlink(self.path)

  def _done(self) -> tuple[int, int]:
    """(units done, bytes they read)."""
    try:
      with open(self.path, encoding="ascii") as f:
        records = f.read().split()
    except OSError:
      return 0, 0
    return len(records), sum(int(r) for r in records if r.isdigit())

  def _watch(self) -> None:
    tty = sys.stderr.isatty()
    start, reported = time.monotonic(), -1
    while True:
      stopping = self._stop.wait(0.25 if tty else 1.0)
      done, read = self._done()
      if tty:
        print("\r" + self.line(done, time.monotonic() - start, read), end="", file=sys.stderr, flush=True)
      elif done != reported and (done - reported >= max(1, self.total // 10) or done == self.total):
        print(self.line(done, time.monotonic() - start, read), file=sys.stderr, flush=True)
        reported = done
      if stopping:
        break
    if tty:
      print(file=sys.stderr, flush=True)

  def line(self, done: int, seconds: float, read: int = 0) -> str:
    """'to_maxtext: 12/39 slices [#######.................]  30% 210 MB/s ETA 9s, 4.2s'.

    The ETA is the bytes still to read at the rate so far (the count of units left when the total
    bytes are unknown); none before the first unit is done."""
    width = 24
    filled = width * done // self.total
    rate = read / seconds if seconds > 0 else 0.0
    if done == 0 or rate <= 0:
      eta = "ETA --"
    elif self.total_bytes:
      eta = f"ETA {format_duration(max(self.total_bytes - read, 0) / rate)}"
    else:
      eta = f"ETA {format_duration(seconds * (self.total - done) / done)}"
    return (f"{self.label}: {done}/{self.total} {self.unit} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * done // self.total:3d}% {human_bytes(rate)}/s {eta}, {seconds:.1f}s")


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run(build: Callable[[beam.Pipeline, str | None], object], options: PipelineOptions, total: int,
        label: str, show_progress: bool, wait: bool | None = None, unit: str = "slices",
        total_bytes: int | None = None) -> dict[str, int]:
  """Builds with `build(pipeline, progress_path)` and runs it; returns the counters.

  The progress line counts `total` `unit`s (what each worker's tensor_done marks) and, with
  `total_bytes` (the bytes the run reads), shows its ETA from the bytes read so far.

  Without `wait` (default: `waits(options)`), the job is only submitted: the job id and its console
  page are printed and {} comes back at once.
  """
  wait = waits(options) if wait is None else wait
  local = is_local(options)
  verbose = bool(options.view_as(ConversionOptions).verbose)
  _QUIET_WORKERS.relay_errors = verbose
  if not local:
    beam_import.load_remote_io()
  with Progress(total, label, show_progress and local and wait, unit, total_bytes) as progress:
    pipeline = beam.Pipeline(options=options)
    build(pipeline, progress.path)
    with interrupts.contained_workers(verbose):
      result = pipeline.run()
    if not wait:
      job_id = result.job_id() if hasattr(result, "job_id") else None
      where = f": {console_url(options, job_id)}" if job_id and on_dataflow(options) else ""
      print(f"{label}: submitted job {job_id or '(no id)'}{where}", flush=True)
      return {}
    result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
  totals: dict[str, int] = {}
  for c in counters:
    totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
  return totals


def human_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000:
      return f"{n:.3g} {unit}"
    n /= 1000
  return f"{n:.3g} TB"


def plural(count: int, noun: str) -> str:
  """'1 slice', '3 slices'."""
  return f"{count:,} {noun}" + ("" if count == 1 else "s")


def summary(totals: dict[str, int], seconds: float, stored: int | None = None, unit: str = "slice") -> str:
  """'39 slices, 3.84 GB read, 2.35 GB stored on disk in 17.0s (226 MB/s)': the bytes read, and the
  bytes the written files take (compressed; measured from them), else the bytes written before compression."""
  read = totals.get("read-bytes", 0)
  written = (f"{human_bytes(stored)} stored on disk" if stored is not None
             else f"{human_bytes(totals.get('write-bytes', 0))} written")
  return (f"{plural(totals.get('tensors', 0), unit)}, {human_bytes(read)} read, {written} in {seconds:.1f}s "
          f"({human_bytes(read / max(seconds, 1e-9))}/s)")
