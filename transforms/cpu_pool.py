"""One thread per CPU for the work that releases the GIL: zstd frames, numpy's tile copies.

Keyed by process as well as by name: a pool made before a fork has no threads in the child (the
local runner's worker processes), so each process makes its own the first time it asks.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading

_pools: dict[tuple[int, str], concurrent.futures.ThreadPoolExecutor] = {}
_lock = threading.Lock()


def pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
  """This process's pool `name`, made on first use with one thread per CPU."""
  key = (os.getpid(), name)
  with _lock:
    if key not in _pools:
      _pools[key] = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix=f"ckptflow-{name}")
    return _pools[key]
