"""Writes finished data to disk while the job still runs, not all at once before the commit.

Local writers skip fsync (tensorstore's `file_io_sync: false`, plain writes of shards) and the commit
syncs once before its markers. Left alone, the kernel starts writing dirty pages only when they reach
a tenth of memory, so a conversion smaller than that ends with its whole output still in memory and
a sync that waits for every byte: 3-4 s at the end of an 8B-shaped 4-layer run here. Each process
instead asks for its file system to be synced from a background thread whenever WRITEBACK_BYTES more
were written, so the disk works while the CPUs compress, and the final sync has only the last
blocks left. Durability is unchanged: the commit still syncs before anything says "committed".

Written data also leaves the page cache once it is on its way to disk: a file we write ourselves (a
safetensors shard) drops its pages a WRITEBACK_BYTES step behind its end (`DropBehind`), and each
writer's OCDBT data files (tensorstore's) are dropped after every background sync. On the development
VM (a Firecracker/KVM guest whose free memory goes back to the host) a page the guest has not
touched lately costs about a second per GB to fault in, and a written page left in the cache is one
the next write cannot reuse, so every page of the output was such a page. MaxText -> HF of the
8B-shaped model spent 11 of its 18.5 CPU-seconds in the kernel, 4.0 with this; HF -> MaxText 9.3 of
20.3, 3.3 with this (docs/performance.md). A 1 TB conversion no longer pushes everything else out
of the cache either; the cost is that reading the output right afterwards comes from disk.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading

from transforms import files

WRITEBACK_BYTES = 256 * 2**20


class _Writeback:
  """One per process: a daemon thread that syncs the file systems written since its last pass."""

  def __init__(self):
    self._lock = threading.Lock()
    self._due = threading.Event()
    self._pending = 0
    self._paths: set[str] = set()
    self._drop_dirs: set[str] = set()
    self._dropped: dict[str, int] = {}  # a file dropped from the cache -> its size then
    self._thread: threading.Thread | None = None
    self._pid = os.getpid()

  def wrote(self, path: str, nbytes: int, drop_under: str | None = None) -> None:
    with self._lock:
      if self._thread is None or self._pid != os.getpid():  # a forked child starts its own thread
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="ckptflow-writeback", daemon=True)
        self._thread.start()
      self._paths.add(path)
      if drop_under is not None:
        self._drop_dirs.add(drop_under)
      self._pending += nbytes
      if self._pending >= WRITEBACK_BYTES:
        self._pending = 0
        self._due.set()

  def _run(self) -> None:
    while True:
      self._due.wait()
      self._due.clear()
      with self._lock:
        paths, self._paths = self._paths, set()
        drop_dirs = sorted(self._drop_dirs)
      for path in paths:
        sync_file_system(path)
      for directory in drop_dirs:
        self._drop_synced(directory)

  def _drop_synced(self, directory: str) -> None:
    """Drops from the cache the files of `directory` (another writer's, tensorstore's) that grew since
    the last pass: synced just now, so all but what was written meanwhile."""
    try:
      entries = list(os.scandir(directory))
    except OSError:  # removed (a finished or failed job): forget it
      with self._lock:
        self._drop_dirs.discard(directory)
      self._dropped = {f: n for f, n in self._dropped.items() if os.path.dirname(f) != directory}
      return
    for entry in entries:
      try:
        size = entry.stat().st_size
        if self._dropped.get(entry.path) == size:
          continue
        fd = os.open(entry.path, os.O_RDONLY)
      except OSError:
        continue
      try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self._dropped[entry.path] = size
      finally:
        os.close(fd)


class DropBehind:
  """Drops the cached pages of one local file we are writing, in WRITEBACK_BYTES steps, a step behind
  its end. Pages not yet written back stay (the kernel drops only clean ones); nothing is lost either way."""

  def __init__(self, fd: int):
    self.fd = fd
    self.written = 0
    self.dropped = 0

  def wrote(self, nbytes: int) -> None:
    self.written += nbytes
    if self.written - self.dropped < 2 * WRITEBACK_BYTES or not hasattr(os, "posix_fadvise"):
      return
    upto = self.written - WRITEBACK_BYTES
    os.posix_fadvise(self.fd, self.dropped, upto - self.dropped, os.POSIX_FADV_DONTNEED)
    self.dropped = upto


def sync_file_system(path: str) -> None:
  """Writes the dirty pages of the file system holding `path` (Linux syncfs; elsewhere a full sync)."""
  if not sys.platform.startswith("linux"):
    os.sync()
    return
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return  # removed meanwhile (a failed run cleaning up): nothing of it left to write
  try:
    _libc().syncfs(fd)
  finally:
    os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL:
  return ctypes.CDLL(None, use_errno=True)


_WRITEBACK = _Writeback()


def wrote(path: str, nbytes: int, drop_under: str | None = None) -> None:
  """`nbytes` more were written under the local directory `path`, the files of `drop_under` among them
  (dropped from the cache once synced); gs:// paths are the store's own business."""
  if not files.is_gcs(path):
    _WRITEBACK.wrote(path, nbytes, drop_under if hasattr(os, "posix_fadvise") else None)
