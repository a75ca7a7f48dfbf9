"""Writes an Orbax checkpoint from many independent workers, then commits it once.

Every writer (a Beam DoFn instance) owns one OCDBT sub-database `items/ocdbt.process_<id>/` and
writes whole chunks only, so no two writers ever touch the same chunk. Array metadata is computed
from the plan (`orbax_layout`), written once by `create_arrays`, and assumed by the writers. After a
barrier, `commit` merges the sub-databases into `items/manifest.ocdbt` in one atomic transaction
(as Orbax does for multi-host saves) and writes the metadata files and commit markers, last.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Iterable, Sequence

import numpy as np
import tensorstore as ts

from transforms import orbax_layout, stopping, storage, writeback
from transforms.orbax_layout import NUMPY_DTYPES, ArraySpec
from transforms.tensor_ops import contiguous

# Each write call covers whole chunks and about this many bytes: large enough that tensorstore
# compresses several chunks in parallel, small enough to bound a worker's extra memory.
WRITE_BLOCK_BYTES = 256 * 2**20
META_PROCESS = "meta"


@dataclasses.dataclass(frozen=True)
class CheckpointTarget:
  """Where a checkpoint step goes and how it is stored (McJAX: zarr3 + OCDBT; Pathways: no OCDBT).

  `with_step`: the tree has the TrainState's `step` leaf (Linen trees; NNX parameter-only trees do not).
  """
  step_dir: str
  use_ocdbt: bool = True
  use_zarr3: bool = True
  zstd_level: int = orbax_layout.DEFAULT_ZSTD_LEVEL
  # More _CHECKPOINT_METADATA custom_metadata beside scan_layers (a JSON object), e.g. MaxText's `lora`.
  custom_metadata: str = ""
  with_step: bool = True

  @property
  def items(self) -> str:
    return storage.join(self.step_dir, orbax_layout.ITEMS)


@functools.lru_cache(maxsize=None)
def ts_context() -> ts.Context:
  """One tensorstore context per process: its thread pools and caches are shared by all writes.

  Local files are not fsynced one by one; `commit` flushes everything once before the markers.
  """
  return ts.Context({"cache_pool": {"total_bytes_limit": 0}, "file_io_sync": False})


def _ocdbt_kvstore(target: CheckpointTarget, process: str | None = None) -> dict:
  """The merged database (Orbax's settings), or writer `process`'s: new ones get WRITER_OCDBT_CONFIG;
  one an earlier run made (--resume) is opened with the settings stored in it, since tensorstore
  refuses any others as a configuration mismatch."""
  if process is None:
    return {"driver": "ocdbt", "base": storage.kvstore_spec(target.items), "config": orbax_layout.OCDBT_CONFIG,
            "assume_config": True}
  base = storage.join(target.items, orbax_layout.PROCESS_PREFIX + process)
  spec = {"driver": "ocdbt", "base": storage.kvstore_spec(base)}
  if not storage.exists(storage.join(base, orbax_layout.OCDBT_MANIFEST)):
    spec.update(config=orbax_layout.WRITER_OCDBT_CONFIG, assume_config=True)
  return spec


def _array_spec(target: CheckpointTarget, array: ArraySpec, ocdbt: dict | None) -> dict:
  """`ocdbt`: the writer's database (_ocdbt_kvstore), when the target uses OCDBT."""
  if ocdbt is not None:
    kvstore = {**ocdbt, "path": array.key}
  else:
    kvstore = storage.kvstore_spec(storage.join(target.items, array.key))
  return {"driver": "zarr3" if target.use_zarr3 else "zarr", "kvstore": kvstore,
          "metadata": array.metadata(target.use_zarr3, target.zstd_level), "store_data_equal_to_fill_value": True}


def step_array() -> ArraySpec:
  """The TrainState's `step`: an int64 scalar 0."""
  return ArraySpec("step", (), "int64", ())


def create_arrays(target: CheckpointTarget, arrays: Iterable[ArraySpec]) -> None:
  """Writes every array's metadata (and the step value) once, into the coordinator's sub-database."""
  ctx = ts_context()
  ocdbt = _ocdbt_kvstore(target, META_PROCESS) if target.use_ocdbt else None
  opens = [ts.open({**_array_spec(target, a, ocdbt), "create": True, "open": True}, context=ctx)
           for a in arrays]
  for future in opens:
    future.result()
  if not target.with_step:
    return
  step = ts.open({**_array_spec(target, step_array(), ocdbt), "create": True, "open": True},
                 context=ctx).result()
  step.write(np.int64(0)).result()


class SliceWriter:
  """One writer's handle: caches open arrays and writes slices block by block."""

  def __init__(self, target: CheckpointTarget, process_id: str):
    self.target = target
    self.process_id = process_id
    self._stores: dict[str, ts.TensorStore] = {}
    self._ocdbt: dict | None = None  # its database, looked up at the first write

  @property
  def _data_files(self) -> str | None:
    """The directory of this writer's OCDBT data files, which nothing else writes."""
    if not self.target.use_ocdbt:
      return None
    return storage.join(self.target.items, orbax_layout.PROCESS_PREFIX + self.process_id, "d")

  def store(self, array: ArraySpec) -> ts.TensorStore:
    store = self._stores.get(array.path)
    if store is None:
      if self.target.use_ocdbt and self._ocdbt is None:
        self._ocdbt = _ocdbt_kvstore(self.target, self.process_id)
      spec = {**_array_spec(self.target, array, self._ocdbt), "assume_metadata": True}
      store = self._stores[array.path] = ts.open(spec, context=ts_context()).result()
    return store

  def write(self, array: ArraySpec, index: Sequence[tuple[int, int]], value: np.ndarray,
            window: orbax_layout.Window | None = None) -> int:
    """Writes `value` at the stacked positions `index` (and row block `window`); returns the bytes written."""
    store = self.store(array)
    dtype = NUMPY_DTYPES[array.dtype]
    expr = list(orbax_layout.region(len(array.shape), index, window))
    free = [a for a, e in enumerate(expr) if isinstance(e, slice)]
    expected = tuple(len(range(*expr[a].indices(array.shape[a]))) for a in free)
    if tuple(value.shape) != expected:
      raise ValueError(f"{array.path}: slice has shape {list(value.shape)}, expected {list(expected)}")
    if not free:
      store[tuple(expr)].write(np.asarray(value, dtype)).result()
      return dtype.itemsize
    written = value.size * dtype.itemsize
    axis = free[0]
    offset = expr[axis].start or 0
    row_bytes = math.prod(value.shape[1:]) * dtype.itemsize
    chunk_rows = array.chunks[axis]
    rows = max(chunk_rows, (WRITE_BLOCK_BYTES // max(row_bytes, 1)) // chunk_rows * chunk_rows)
    pending = None
    for start in range(0, value.shape[0], rows):
      stop = min(start + rows, value.shape[0])
      expr[axis] = slice(offset + start, offset + stop)
      # Copy the next block while tensorstore compresses and writes the previous one. Nothing changes a
      # block once written, so tensorstore may encode from it instead of copying it into fresh pages
      # (8B-shaped, 8 layers: 6% less CPU, 8% lower peak RSS, median of 4 paired runs).
      stopping.check()
      block = contiguous(value[start:stop], dtype)
      future = store[tuple(expr)].write(block, can_reference_source_data_indefinitely=True)
      if pending is not None:
        pending.result()
      pending = future
    pending.result()
    writeback.wrote(self.target.items, written, self._data_files)
    return written

  def write_stored_chunk(self, array: ArraySpec, key: str, data: bytes) -> ts.Future:
    """Starts writing one already-encoded chunk (`key` as orbax_layout.chunk_keys names it), through the
    array's own key-value store: the same OCDBT sub-database its values go to."""
    writeback.wrote(self.target.items, len(data), self._data_files)
    return self.store(array).kvstore.write(key[len(array.key) + 1:], data)


def merge_writers(target: CheckpointTarget, process_ids: Iterable[str]) -> None:
  """Points items/manifest.ocdbt at every writer's data in one atomic transaction.

  Only B-tree references are copied: the sub-databases stay and hold the data.
  """
  ctx = ts_context()
  parent = ts.KvStore.open(_ocdbt_kvstore(target), context=ctx).result()
  txn = ts.Transaction(atomic=True)
  copies = [ts.KvStore.open(_ocdbt_kvstore(target, p), context=ctx).result()
            .experimental_copy_range_to(parent.with_transaction(txn)) for p in sorted(set(process_ids))]
  for copy in copies:
    copy.result()
  txn.commit_async().result()


def writer_ids(target: CheckpointTarget) -> list[str]:
  """The OCDBT sub-databases already under items/ (from an earlier, interrupted run)."""
  prefix = orbax_layout.PROCESS_PREFIX
  return [n[len(prefix):] for n in storage.list_names(target.items) if n.startswith(prefix)]


def stored_keys(target: CheckpointTarget) -> set[str]:
  """Every chunk key any writer has committed: the record of finished work that survives a crash.

  OCDBT commits a write atomically, so a key present in a sub-database holds its whole chunk;
  without OCDBT each chunk is a file written by a rename.
  """
  if not target.use_ocdbt:
    return set(storage.find(target.items))
  keys: set[str] = set()
  for process in writer_ids(target):
    kv = ts.KvStore.open(_ocdbt_kvstore(target, process), context=ts_context()).result()
    keys.update(k.decode() for k in kv.list().result())
  return keys


def finished(target: CheckpointTarget, slices: Sequence[tuple[ArraySpec, Sequence[tuple[int, int]],
                                                               orbax_layout.Window | None]]) -> list[bool]:
  """For each (array, index, window) slice: are all its chunks stored already?"""
  keys = stored_keys(target)
  return [all(k in keys for k in orbax_layout.chunk_keys(a, i, target.use_zarr3, w)) for a, i, w in slices]


def commit(target: CheckpointTarget, arrays: Iterable[ArraySpec], process_ids: Iterable[str],
           scan_layers: bool, init_ns: int) -> None:
  """Merges, then writes _METADATA, _CHECKPOINT_METADATA and the two commit markers, markers last."""
  if target.use_ocdbt:
    # An interrupted run's writers hold finished slices too (--resume).
    merge_writers(target, [META_PROCESS, *process_ids, *writer_ids(target)])
  if not storage.is_gcs(target.step_dir):
    os.sync()  # Local writers skipped fsync: make every byte durable before anything says "committed".
  paths = [a.path for a in arrays]
  storage.write_text(storage.join(target.items, orbax_layout.METADATA),
                     json.dumps(orbax_layout.pytree_metadata(paths, target.use_ocdbt, target.use_zarr3,
                                                             target.with_step)))
  storage.write_text(storage.join(target.step_dir, orbax_layout.CHECKPOINT_METADATA),
                     json.dumps(orbax_layout.checkpoint_metadata(scan_layers, init_ns, time.time_ns(),
                                                                 json.loads(target.custom_metadata or "{}"))))
  for directory in (target.items, target.step_dir):
    storage.write_text(storage.join(directory, orbax_layout.COMMIT_MARKER),
                       f"Checkpoint commit was successful to {directory}")
