"""Temporary files our writers make, recognised by name so that a run can remove them (its own after
a failure, and those an earlier, killed run left), and nothing else.

  .<name>.<8 chars>.tmp         storage.write_bytes (mkstemp next to the file, renamed into place)
  <shard>.safetensors.<8 hex>.tmp  SafetensorsWriter (renamed into place when the shard is whole)
  <key>.__lock                   tensorstore's file kvstore (written, then renamed over <key>)
  .ckptflow-probe-<pid>          storage.check_writable
  .ckptflow.lock.<8 hex>.new|.stale   writer_lock while it creates or takes over a lock
  <tmp>/ckptflow-shard-<pid>-*   a worker's local copy of a shard bound for the Hub

Only a run that holds the destination's lock sweeps it, so no live writer of ours is using them.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable

from transforms import files

_MKSTEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
_OURS = (re.compile(r".+\.safetensors\.[0-9a-f]{8}\.tmp"), re.compile(r"\.ckptflow-probe-\d+"),
         re.compile(r"\.ckptflow\.lock\.[0-9a-f]{8}\.(new|stale)"))
_TENSORSTORE = re.compile(r".+\.__lock")
SCRATCH_PREFIX = "ckptflow-shard-"
_SCRATCH = re.compile(re.escape(SCRATCH_PREFIX) + r"(?P<pid>\d+)-.+")


def is_temporary(name: str, ours: Callable[[str], bool] = lambda name: True, tensorstore: bool = False) -> bool:
  """Whether `name` is one of our temporary files; `ours(final name)` limits mkstemp leftovers to
  files we write in that directory, `tensorstore` admits tensorstore's (only inside a checkpoint)."""
  found = _MKSTEMP.fullmatch(name)
  if found and ours(found.group("name")):
    return True
  return any(p.fullmatch(name) for p in _OURS) or bool(tensorstore and _TENSORSTORE.fullmatch(name))


def sweep(directory: str, ours: Callable[[str], bool] = lambda name: True, tensorstore: bool = False,
          recursive: bool = False) -> list[str]:
  """Removes our temporary files in `directory` (and below it if `recursive`); returns their paths.
  On gs:// only the directory itself is listed: uploads there are atomic, tensorstore leaves none."""
  if files.is_gcs(directory):
    found = [files.join(directory, n) for n in files.list_names(directory) if is_temporary(n, ours, tensorstore)]
  else:
    found = []
    for root, dirs, names in os.walk(directory):
      found += [os.path.join(root, n) for n in names if is_temporary(n, ours, tensorstore)]
      if not recursive:
        break
      dirs.sort()
  for path in found:
    files.remove_tree(path)
  return found


def scratch_directory() -> tempfile.TemporaryDirectory:
  """A worker's local scratch directory, named by its pid so a later run can tell it was left behind."""
  return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def sweep_scratch(directory: str | None = None) -> list[str]:
  """Removes scratch directories of processes on this machine that no longer run (killed workers)."""
  directory = directory or tempfile.gettempdir()
  removed = []
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    found = _SCRATCH.fullmatch(name)
    if found and not _running(int(found.group("pid"))):
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      removed.append(os.path.join(directory, name))
  return removed


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True

