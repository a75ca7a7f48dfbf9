"""Thin Beam steps around the pure functions: create arrays, write slices, barrier, commit."""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import apache_beam as beam
import numpy as np

from transforms.errors import ConversionError
from transforms import disk_full, hub_io, manifest, orbax_writer, writer_lock
from transforms.chunk_copy import ChunkCopier
from transforms.convert import hf_to_maxtext
from transforms.orbax_layout import NUMPY_DTYPES, ArraySpec
from transforms.orbax_reader import OrbaxRef, read_together
from transforms.orbax_writer import CheckpointTarget
from transforms.safetensors_io import read_tensor

METRICS_NAMESPACE = "ckptflow"


def convert_slice(task, param, sizes: dict[str, Any],
                  read: list[np.ndarray] | None = None) -> tuple[np.ndarray, tuple[tuple[str, int], ...]]:
  """One task's MaxText value (of its row block, if split) and the CRC-32C of each source as read
  (`read`: the sources' values when they were read already), before the eager cast to
  `task.source_dtype`, if any.

  A slice of a MaxText checkpoint (OrbaxRef) is already the value: only the writer's cast remains.
  """
  sources = read or [read_tensor(ref, task.rows) for ref in task.sources]
  checksums = tuple((manifest.checksum_key(ref.name, task.rows), manifest.crc32c(s))
                    for ref, s in zip(task.sources, sources))
  if isinstance(task.sources[0], OrbaxRef):
    return sources[0], checksums
  if task.source_dtype is not None:
    sources = [s.astype(NUMPY_DTYPES[task.source_dtype], copy=False) for s in sources]
  value = hf_to_maxtext(sources, param, sizes if task.block is None else task.block.with_sizes(sizes))
  return value, checksums


class CreateArraysFn(beam.DoFn):
  """Writes every array's metadata once, before any merge; yields the coordinator's sub-database."""

  def __init__(self, target: CheckpointTarget, arrays: tuple[ArraySpec, ...]):
    self.target = target
    self.arrays = arrays

  def process(self, _: Any) -> Iterator[tuple[str, int]]:
    with disk_full.writing(self.target.items, "the arrays' metadata"):
      orbax_writer.create_arrays(self.target, self.arrays)
    yield orbax_writer.META_PROCESS, 0, ()


class TensorCountingFn(beam.DoFn):
  """Per-tensor metrics (tensors, read-bytes, write-bytes) and the local runner's progress
  records (the bytes each finished one read).

  `family` is the model family (models.spec.Family) whose `param(i)` names each task's transforms.
  `hub` is installed in each worker process: how it reaches the Hub (see hub_io.HubAccess).
  """

  def __init__(self, family: Any, sizes: dict[str, Any], progress_path: str | None,
               hub: hub_io.HubAccess | None = None):
    self.family = family
    self.sizes = sizes
    self.progress_path = progress_path
    self.hub = hub
    self.tensors = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "tensors")
    self.read_bytes = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read-bytes")
    self.write_bytes = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "write-bytes")
    self.msec = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "write-msec")

  def setup(self) -> None:
    self.param_of = self.family.param
    if self.hub is not None:
      hub_io.configure(self.hub)

  def tensor_done(self, read: int, written: int) -> None:
    self.tensors.inc()
    self.read_bytes.inc(read)
    self.write_bytes.inc(written)
    if self.progress_path:
      with open(self.progress_path, "a") as f:
        f.write(f"{read} ")


class WriteSliceFn(TensorCountingFn):
  """Reads one source tensor, transforms it and writes it into its slice; yields (writer id, 1, CRC-32Cs).

  A slice of a MaxText checkpoint whose chunks stay the same is copied as stored (transforms/chunk_copy.py).
  """

  def __init__(self, target: CheckpointTarget, family: Any, sizes: dict[str, Any],
               progress_path: str | None = None, hub: hub_io.HubAccess | None = None):
    super().__init__(family, sizes, progress_path, hub)
    self.target = target
    self.copied = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "slices-copied-as-stored")

  def setup(self) -> None:
    super().setup()
    # One OCDBT sub-database per DoFn instance: a single writer each, never shared.
    self.writer = orbax_writer.SliceWriter(self.target, uuid.uuid4().hex[:16])
    self.copier = ChunkCopier(self.writer)

  def process(self, element) -> Iterator[tuple[str, int, tuple[tuple[str, int], ...]]]:
    """`element`: one task, or tasks whose sources share stored chunks (planner.elements), read together."""
    tasks = element if isinstance(element, tuple) else (element,)
    together = read_together([t.sources[0] for t in tasks], tasks[0].rows) if len(tasks) > 1 else [None]
    for task, value in zip(tasks, together):
      yield self._write(task, None if value is None else [value])

  def _write(self, task, read: list[np.ndarray] | None) -> tuple[str, int, tuple[tuple[str, int], ...]]:
    start = time.monotonic()
    with disk_full.writing(self.target.items, slice_name(task)):
      if read is None and self.copier.copyable(task):
        name, crc = self.copier.copy(task)
        checksums = ((manifest.checksum_key(name, task.rows, stored=True), crc),)
        written = task.written_nbytes
        self.copied.inc()
      else:
        value, checksums = convert_slice(task, self.param_of(task.param), self.sizes, read)
        written = self.writer.write(task.array, task.index, value, task.window)
    self.tensor_done(task.nbytes, written)
    self.msec.update(int((time.monotonic() - start) * 1000))
    return self.writer.process_id, 1, checksums


def slice_name(task) -> str:
  """'params/params/decoder/layers/mlp/wi_0/kernel [1]=3 rows 0:512', for messages."""
  fixed = "".join(f" [{axis}]={position}" for axis, position in task.index)
  rows = f" rows {task.window[1]}:{task.window[2]}" if task.window else ""
  return task.array.path + fixed + rows


class CollectWriters(beam.CombineFn):
  """The barrier: every writer's id, the number of slices written, and each source's CRC-32C."""

  def create_accumulator(self):
    return frozenset(), 0, {}

  def add_input(self, acc, item):
    ids, count, crcs = acc
    process_id, n, checksums = item
    return ids | {process_id}, count + n, {**crcs, **dict(checksums)}

  def merge_accumulators(self, accs):
    ids, count, crcs = frozenset(), 0, {}
    for a_ids, a_count, a_crcs in accs:
      ids, count, crcs = ids | a_ids, count + a_count, {**crcs, **a_crcs}
    return ids, count, crcs

  def extract_output(self, acc):
    return sorted(acc[0]), acc[1], acc[2]


class CommitFn(beam.DoFn):
  """After the barrier: checks every slice arrived, merges the writers and writes commit markers."""

  def __init__(self, target: CheckpointTarget, arrays: tuple[ArraySpec, ...], expected_slices: int,
               scan_layers: bool, init_ns: int, provenance: dict[str, Any] | None = None,
               lock: writer_lock.Held | None = None):
    self.target = target
    self.lock = lock
    self.arrays = arrays
    self.expected_slices = expected_slices
    self.scan_layers = scan_layers
    self.init_ns = init_ns
    self.provenance = provenance

  def process(self, collected) -> Iterator[str]:
    process_ids, count, checksums = collected
    if count != self.expected_slices:
      raise ConversionError(f"{self.target.items}: {count} of {self.expected_slices} slices were written; "
                            "not committing")
    with disk_full.writing(self.target.items, "the commit (merge, metadata and markers)"):
      if self.provenance is not None:
        manifest.write(self.target.step_dir, self.provenance, checksums)
      writers = [p for p in process_ids if p != orbax_writer.META_PROCESS]
      orbax_writer.commit(self.target, self.arrays, writers, self.scan_layers, self.init_ns)
    writer_lock.release(self.lock)  # committed: the destination is free (also when no driver waits, on Dataflow)
    yield self.target.items
