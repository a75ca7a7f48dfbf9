"""Copying stored chunks as they are: a slice whose chunks do not change is moved without decoding a value.

Re-laying out a checkpoint (scan <-> unscan, McJAX <-> Pathways) keeps most chunks byte for byte:
when a target slice is chunked exactly like its source slice (the same chunk shape on the slice's
axes, 1 on the stacked axes, one inner chunk per zarr3 shard) and both encode chunks the same way
(zarr format, dtype, codecs, key encoding: `encoding`), each stored chunk of the source (a zarr3
shard or a zarr v2 chunk) is read from the source's key-value store and written, unchanged, under
the target's key in the writer's own OCDBT sub-database (or file). No value is decompressed,
converted or compressed again, so the conversion runs at the speed of copying its bytes.

Anything else (a dtype change, another chunk grid, a source whose chunks span several layers, other
codecs or zstd level) goes through the values: read, cast, write.
"""
from __future__ import annotations

import ctypes
import functools
import json
from typing import Any, Iterator

import google_crc32c
import tensorstore as ts

from transforms import ocdbt_index, orbax_layout, stopping, storage
from transforms.errors import ConversionError
from transforms.orbax_layout import ArraySpec
from transforms.orbax_reader import CheckpointReader, OrbaxRef, shared_reader
from transforms.orbax_writer import SliceWriter

# Metadata that says nothing about how a stored chunk's bytes are made from its values.
_NOT_ENCODING = ("shape", "chunk_grid", "chunks", "fill_value", "attributes", "dimension_names", "node_type")


# glibc's mallopt parameters: every chunk copied passes through buffers of a few MB; by default glibc
# maps each from the kernel and returns it when freed, so every page is faulted in again, which costs
# as much CPU as the copying itself. Kept in the heap instead (the peak is what it was), they are reused.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 64 * 2**20))


@functools.lru_cache(maxsize=None)
def reuse_freed_buffers() -> bool:
  """Asks glibc, once per process, to keep freed buffers up to 32 MB in the heap; False elsewhere."""
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  return all(mallopt(param, value) == 1 for param, value in _KEEP)


def encoding(store: ts.TensorStore) -> str:
  """What, besides its values and shape, decides a stored chunk's bytes: zarr format, dtype, codecs
  (zstd level included) and chunk key encoding, as tensorstore normalises the array's metadata."""
  metadata = {k: v for k, v in store.spec().to_json()["metadata"].items() if k not in _NOT_ENCODING}
  for codec in metadata.get("codecs", ()):
    if codec.get("name") == "sharding_indexed":
      codec["configuration"] = {k: v for k, v in codec["configuration"].items() if k != "chunk_shape"}
  return json.dumps(metadata, sort_keys=True)


def _one_chunk_per_shard(store: ts.TensorStore) -> tuple[int, ...] | None:
  """The stored chunk shape, or None when a zarr3 shard holds several inner chunks."""
  layout = store.chunk_layout
  write, read = tuple(layout.write_chunk.shape or ()), tuple(layout.read_chunk.shape or ())
  return write if write == read else None


def _free(chunks: tuple[int, ...], index: tuple[tuple[int, int], ...]) -> tuple[int, ...] | None:
  """The chunk shape on the slice's axes; None unless every stacked axis is chunked by 1."""
  fixed = dict(index)
  if any(chunks[a] != 1 for a in fixed):
    return None
  return tuple(c for a, c in enumerate(chunks) if a not in fixed)


class ChunkCopier:
  """A writer's chunk copies: decides once per (source array, target array) whether chunks can move as stored."""

  def __init__(self, writer: SliceWriter):
    self.writer = writer
    self._decisions: dict[tuple[str, str, str, tuple], bool] = {}
    reuse_freed_buffers()

  def copyable(self, task: Any) -> bool:
    ref = task.sources[0]
    if len(task.sources) != 1 or not isinstance(ref, OrbaxRef) or ref.dtype != task.array.dtype:
      return False
    key = (ref.items, ref.array, task.array.path, ref.index)
    if key not in self._decisions:
      self._decisions[key] = self._same_chunks(ref, task.array, task.index)
    return self._decisions[key]

  def _same_chunks(self, ref: OrbaxRef, array: ArraySpec, index: tuple[tuple[int, int], ...]) -> bool:
    source = shared_reader(ref.items).array(ref.array)
    target = self.writer.store(array)
    chunks = _one_chunk_per_shard(source)
    if chunks is None or _one_chunk_per_shard(target) is None:
      return False
    return (_free(chunks, ref.index) == _free(tuple(array.chunks), index) is not None
            and encoding(source) == encoding(target))

  def copy(self, task: Any) -> tuple[str, int]:
    """Copies the task's chunks; returns the CRC-32C of the stored bytes read, in chunk order (CRC-32C:
    hardware-accelerated, so the checksum costs a fraction of the copy)."""
    (ref,) = task.sources
    reader = shared_reader(ref.items)
    source = reader.array(ref.array)
    source_spec = ArraySpec(ref.array, tuple(source.shape), ref.dtype, tuple(source.chunk_layout.write_chunk.shape))
    window = None if task.block is None else (ref.window_axis, *task.rows)
    keys = orbax_layout.chunk_keys(source_spec, ref.index, reader.use_zarr3, window)
    targets = orbax_layout.chunk_keys(task.array, task.index, self.writer.target.use_zarr3, task.window)
    if len(targets) != len(keys):
      raise ValueError(f"{task.array.path}: {len(targets)} target chunks for {len(keys)} source chunks")
    crc = 0
    writes = []
    for data, key in zip(_stored_chunks(reader, source, ref.array, keys), targets):
      if data is None:
        raise ConversionError(f"{ref.items}: cannot read {ref.array} {list(ref.index)}: a chunk is missing; the "
                              "checkpoint is incomplete or damaged")
      crc = google_crc32c.extend(crc, data)
      stopping.check()
      writes.append(self.writer.write_stored_chunk(task.array, key, data))
    for write in writes:
      write.result()
    return ref.name, crc


def _stored_chunks(reader: CheckpointReader, source: ts.TensorStore, array: str, keys: list[str]) -> Iterator[bytes | None]:
  """Each key's stored bytes (None when missing), in order. A local source's are read from its files
  one at a time, each in one copy: an OCDBT data file's range (transforms/ocdbt_index.py), or a chunk's
  own file. Anything else goes through tensorstore, every read started at once."""
  local = storage.is_local(reader.items)
  index = ocdbt_index.stored_values(reader.items) if local and reader.use_ocdbt else None
  if index is not None:
    for key in keys:
      yield index.read(key.encode())
    return
  if local and not reader.use_ocdbt:
    for key in keys:
      path = storage.join(reader.items, key)
      yield storage.read_bytes(path) if storage.exists(path) else None
    return
  prefix = len(orbax_layout.array_key(array)) + 1
  for future in [source.kvstore.read(k[prefix:]) for k in keys]:
    result = future.result()
    yield result.value if result.state == "value" else None  # each access copies the chunk out of tensorstore
