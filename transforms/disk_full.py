"""A full disk, said in one line: which destination, what was being written.

Writers meet it as OSError ENOSPC / EDQUOT (Python file writes) or as tensorstore's ValueError
`RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']`. Inside a Beam worker either
would reach the user as a traceback of the runner; `writing()` turns it into a ConversionError whose
one line crosses the worker boundary (cli.worker_error) and starts with OUT_OF_SPACE, which tells
the driver to remove (or, with --resume, keep) what the run wrote.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
from typing import Iterator

from transforms import stopping
from transforms.errors import ConversionError

OUT_OF_SPACE = "out of space"
_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_TEXTS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'", "os_error_code='122'")


def is_out_of_space(e: BaseException) -> bool:
  if isinstance(e, OSError) and e.errno in _ERRNOS:
    return True
  return any(t in str(e) for t in _TEXTS)


@contextlib.contextmanager
def writing(destination: str, what: str) -> Iterator[None]:
  """Runs a write to `destination`; a full disk becomes '<destination>: out of space writing <what> (...)'.

  Every write a worker makes passes here, so this is also where an interrupted command's worker
  threads stop: none starts once a stop is asked for, and the stop waits for those running (stopping.work)."""
  with stopping.work():
    try:
      yield
    except ConversionError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_space(e):
        raise
      reason = "Disk quota exceeded" if _quota(e) else "No space left on device"
      raise ConversionError(f"{destination}: {OUT_OF_SPACE} writing {what} ({reason})") from None


def _quota(e: BaseException) -> bool:
  if isinstance(e, OSError) and e.errno is not None:
    return e.errno == errno.EDQUOT
  return "Disk quota exceeded" in str(e) or "os_error_code='122'" in str(e)


def free_bytes(path: str) -> int:
  """Free bytes for this user on the file system that holds `path` (or would: its nearest existing parent)."""
  return shutil.disk_usage(existing_parent(path)).free


def existing_parent(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def check_scratch(directory: str, needed: int, what: str) -> None:
  """On a worker, before it fills its local scratch space: one line if `needed` bytes do not fit."""
  free = free_bytes(directory)
  if needed > free:
    raise ConversionError(f"worker {socket.gethostname()}: {directory} has {free / 1e6:,.0f} MB free; {what} needs "
                          f"{needed / 1e6:,.0f} MB there (give the workers larger disks, e.g. --disk_size_gb, or set "
                          "TMPDIR)")
