"""Ctrl-C and SIGTERM: one line, exit 130 / 143, and the run's temporary files removed.

A terminal's Ctrl-C signals the whole foreground process group. Left alone, each of the local
runner's worker processes then prints its own KeyboardInterrupt traceback and the runner relays
their dying words as CRITICAL log lines. So the workers are started in their own session (the
terminal's signal never reaches them), and the first SIGINT or SIGTERM the command gets kills them
(SIGKILL: nothing is printed, nothing more is written), stops the workers that are threads of this
process (transforms/stopping.py: the writes in flight end, no new one starts), quiets Beam's logging
and its worker threads' exceptions, and raises `Interrupted` in the main thread. The job that was
running turns that into its one line ("11 of 27 slices stored in <dir>; rerun with --resume") after
removing its temporary files; later signals are ignored while it does.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator

from apache_beam.runners.portability import local_job_service
from apache_beam.runners.worker import sdk_worker

from transforms import stopping


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM; `message` is what the interrupted job says about its output."""

  def __init__(self, signum: int = signal.SIGINT, message: str | None = None):
    super().__init__(message or "")
    self.signum = signum
    self.message = message

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


def as_interrupted(e: BaseException) -> Interrupted:
  """A plain KeyboardInterrupt (no handler installed: a test, a library) is a SIGINT."""
  return e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)


_workers: set[subprocess.Popen] = set()
_workers_lock = threading.Lock()
_worker_stderr: list = [None]  # None: the driver's; DEVNULL unless --verbose
_received: list[int] = []
_verbose = [False]


# Run by the worker's own process before it becomes the worker (exec): asks Linux for SIGKILL when its
# parent, the driver, dies, so a driver killed with kill -9 takes its workers with it instead of
# leaving them writing into a destination that another run may take over. argv: driver pid, command.
_DIE_WITH_DRIVER = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
                    "os.getppid() == int(sys.argv[1]) or os._exit(1); os.execv(sys.argv[2], sys.argv[2:])")


def _start_worker(command: str, *args, **kwargs) -> subprocess.Popen:
  """The local runner's worker, in a session of its own, exec'd by the shell so that its pid is the
  worker's, and (Linux) killed with the driver."""
  if isinstance(command, str) and kwargs.get("shell") and not command.startswith("exec "):
    if sys.platform.startswith("linux"):
      command = f"{shlex.quote(sys.executable)} -c {shlex.quote(_DIE_WITH_DRIVER)} {os.getpid()} {command}"
    command = "exec " + command
  kwargs.setdefault("stderr", _worker_stderr[0])
  process = subprocess.Popen(command, *args, start_new_session=True, **kwargs)  # pylint: disable=consider-using-with
  with _workers_lock:
    _workers.add(process)
  return process


class _WorkerSubprocess:
  """local_job_service's view of `subprocess`: Popen starts workers as above; the rest is the module's."""
  Popen = staticmethod(_start_worker)

  def __getattr__(self, name):
    return getattr(subprocess, name)


class _Discarded(io.TextIOBase):
  def write(self, s: str) -> int:
    return len(s)


class _SysWithQuietWorkers:
  """sdk_worker's view of `sys`, for workers that are threads of this process: it prints a failing
  bundle's traceback to stderr before it hands the same traceback to the driver. That print is dropped
  unless --verbose. For the whole process, not only while a pipeline runs: after an interrupt or a
  failure the driver leaves the pipeline at once, while its worker threads' bundles still unwind."""
  _discarded = _Discarded()

  @property
  def stderr(self):
    return sys.stderr if _verbose[0] else self._discarded

  def __getattr__(self, name):
    return getattr(sys, name)


sdk_worker.sys = _SysWithQuietWorkers()


@contextlib.contextmanager
def contained_workers(verbose: bool = False) -> Iterator[None]:
  """While a local pipeline runs: its workers are ours to stop when the command is interrupted.
  Unless `verbose`, what they print themselves is dropped (workers that are processes or threads): a
  failing element's traceback, which the runner also hands to the driver, where it becomes one line
  (cli.run_main), or all of it with --verbose."""
  original = local_job_service.subprocess
  local_job_service.subprocess = _WorkerSubprocess()
  _worker_stderr[0] = None if verbose else subprocess.DEVNULL
  _verbose[0] = verbose
  try:
    yield
  finally:
    local_job_service.subprocess = original
    with _workers_lock:
      _workers.difference_update([p for p in _workers if p.poll() is not None])


def stop_workers(timeout: float = 10.0) -> None:
  """SIGKILLs every local worker process still running and waits until they are gone."""
  with _workers_lock:
    running = [p for p in _workers if p.poll() is None]
  for process in running:
    try:
      os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
  deadline = time.monotonic() + timeout
  for process in running:
    try:
      process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pass


def _quiet() -> None:
  """What Beam prints while its runner unwinds after the workers were killed: CRITICAL relays of the
  workers' logs, 'Worker subprocess exited with return code -9' from its threads."""
  logging.disable(logging.CRITICAL)
  threading.excepthook = lambda args: None


def _on_signal(signum: int, _frame) -> None:
  if _received:
    return  # already stopping: let the cleanup finish
  _received.append(signum)
  if not _verbose[0]:
    _quiet()
  stop_workers()
  stopping.stop()
  raise Interrupted(signum)


@contextlib.contextmanager
def handled(verbose: bool = False) -> Iterator[None]:
  """For the whole command: SIGINT and SIGTERM raise Interrupted (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _received.clear()
  stopping.reset()
  _verbose[0] = verbose
  previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
