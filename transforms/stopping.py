"""Stopping workers that are threads of the driver's own process, before the driver cleans up.

The local runner's worker processes can be killed when the command is interrupted (pipeline/interrupts.py);
worker threads cannot. Left alone they would go on writing while the interrupted driver removes the
run's temporary files, and leave new ones behind. So every write a worker starts runs inside `work()`
(entered by disk_full.writing, which every worker write passes through), and between blocks it calls
`check()`: once `stop()` is called, a thread's next check raises `Stopped`, no new write starts, and
`stop()` returns when the writes in flight have ended (a block or stored chunk each: well under a
second), so the cleanup that follows has the destination to itself.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_requested = threading.Event()
_in_flight: dict[int, int] = {}  # thread id -> elements it is writing (nested: a commit's own writes)
_changed = threading.Condition()


class Stopped(Exception):
  """Raised in a worker thread after the command was interrupted: nothing more is written."""


def check() -> None:
  if _requested.is_set():
    raise Stopped("the command was interrupted")


@contextlib.contextmanager
def work() -> Iterator[None]:
  """One element's writes: refused once a stop was requested, waited for by `stop()` while they run."""
  me = threading.get_ident()
  with _changed:
    check()
    _in_flight[me] = _in_flight.get(me, 0) + 1
  try:
    yield
  finally:
    with _changed:
      _in_flight[me] -= 1
      if not _in_flight[me]:
        del _in_flight[me]
      _changed.notify_all()


def stop(timeout: float = 60.0) -> bool:
  """Asks every worker thread to stop and waits until no other thread is writing (the caller's own
  write, when the runner ran it in this thread, unwinds after it returns); False if one still was at `timeout`."""
  _requested.set()
  me = threading.get_ident()
  with _changed:
    return _changed.wait_for(lambda: not set(_in_flight) - {me}, timeout)


def reset() -> None:
  """For the next command run in this process (tests, the batch runner)."""
  _requested.clear()
