"""Reads slices of an Orbax checkpoint with tensorstore alone (no jax, no orbax).

The storage layout is read from the checkpoint itself: `_METADATA` says zarr3 or zarr v2, and a
`manifest.ocdbt` means one OCDBT database rather than a directory per array. Which leaves are the
model's parameters, and how they are laid out, is `tree` (transforms/checkpoint_tree.py).

`OrbaxRef` is one slice of a checkpoint array presented as a conversion source, like a safetensors
`TensorRef`: planned from metadata, read by a worker with one ranged read of its chunks.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
from typing import Any, Sequence

import numpy as np
import tensorstore as ts

from transforms.errors import ConversionError
from transforms import checkpoint_tree, chunk_decode, orbax_layout, orbax_writer, storage, writer_lock
from transforms.orbax_writer import ts_context


# How the MaxText-style flags of to_maxtext spell the options its writer lock records.
_RESUME_WORDS = {"hf_model_path": "--hf_model_path={}", "model_name": "model_name={}", "scan_layers": "scan_layers={}",
                 "save_dtype": "--save_dtype={}"}


def unfinished(items: str, missing: str) -> str | None:
  """What a checkpoint without its commit is, when ckptflow's to_maxtext was writing it: still being
  written (its lock is held by a live process), or an interrupted conversion, with the command that
  finishes it. None when nothing says ckptflow wrote it."""
  step_dir = storage.parent(items)
  base = storage.parent(step_dir)
  found = writer_lock.read(writer_lock.lock_path(base)) if not storage.is_hub(base) else None
  holder = found[0] if found else None
  if holder is not None and holder.alive():
    return f"{items}: still being written by {holder.describe()} ({missing}); wait for it to finish"
  ours = storage.exists(storage.join(items, orbax_layout.PROCESS_PREFIX + orbax_writer.META_PROCESS))
  if not (ours or found):
    return None
  if holder is not None and holder.command == "to_maxtext":
    words = [_RESUME_WORDS[k].format(v) for k, v in sorted(holder.options.items()) if k in _RESUME_WORDS]
    how = " ".join(["python -m pipeline.to_maxtext", f"base_output_directory={base}", *words, "--resume"])
  else:
    how = f"the to_maxtext command that started it plus --resume (base_output_directory={base})"
  return (f"{items}: an interrupted conversion (ckptflow's to_maxtext stopped before committing it: {missing}); "
          f"resume it with {how}")


class CheckpointReader:
  """Opens each array of `items` once, then reads any slice of it."""

  def __init__(self, items: str):
    self.items = items
    metadata_path = storage.join(items, orbax_layout.METADATA)
    if not storage.exists(metadata_path):
      raise ConversionError(unfinished(items, "no _METADATA yet") or
                            f"{items}: no _METADATA; not an Orbax checkpoint item directory "
                            "(load_parameters_path should end in /0/items)")
    self.metadata: dict[str, Any] = json.loads(storage.read_text(metadata_path))
    step_dir = items.rstrip("/").rsplit("/", 1)[0]
    if not any(storage.exists(storage.join(d, orbax_layout.COMMIT_MARKER)) for d in (items, step_dir)):
      raise ConversionError(unfinished(items, f"no {orbax_layout.COMMIT_MARKER}") or
                            f"{items}: no {orbax_layout.COMMIT_MARKER}: the checkpoint was never committed "
                            "(its writer died or is still running); convert it again or point at a finished one")
    self.use_zarr3 = bool(self.metadata.get("use_zarr3", False))
    self.use_ocdbt = storage.exists(storage.join(items, orbax_layout.OCDBT_MANIFEST))
    self._stores: dict[str, ts.TensorStore] = {}
    self._decoders: dict[str, chunk_decode.ChunkDecoder | None] = {}

  def _kvstore(self, path: str) -> dict[str, Any]:
    key = orbax_layout.array_key(path)
    if self.use_ocdbt:
      return {"driver": "ocdbt", "base": storage.kvstore_spec(self.items), "path": key}
    return storage.kvstore_spec(storage.join(self.items, key))

  def _open(self, path: str) -> ts.Future:
    # A missing chunk is an error, never zeros (Orbax's raise_array_data_missing_error).
    spec = {"driver": "zarr3" if self.use_zarr3 else "zarr", "kvstore": self._kvstore(path), "open": True,
            "fill_missing_data_reads": False}
    return ts.open(spec, context=ts_context(), read=True)

  def _opened(self, path: str, future: ts.Future) -> ts.TensorStore:
    try:
      return future.result()
    except ValueError as e:
      raise ConversionError(f"{self.items}: cannot open array {path}: {e}") from None

  def array(self, path: str) -> ts.TensorStore:
    store = self._stores.get(path)
    if store is None:
      store = self._stores[path] = self._opened(path, self._open(path))
    return store

  @property
  def paths(self) -> list[str]:
    """Every leaf's tree path ('params/params/decoder/...', 'opt_state/0/mu/...'), from _METADATA."""
    return sorted("/".join(ast.literal_eval(key)) for key in self.metadata.get("tree_metadata", {}))

  @functools.cached_property
  def custom_metadata(self) -> dict[str, Any]:
    """The step's _CHECKPOINT_METADATA custom_metadata ({} when there is none)."""
    step_metadata = storage.join(storage.parent(self.items), orbax_layout.CHECKPOINT_METADATA)
    if not storage.exists(step_metadata):
      return {}
    try:
      return json.loads(storage.read_text(step_metadata)).get("custom_metadata") or {}
    except json.JSONDecodeError:
      raise ConversionError(f"{step_metadata}: not valid JSON; the checkpoint is damaged") from None

  @functools.cached_property
  def tree(self) -> checkpoint_tree.CheckpointTree:
    """Which leaves are parameters, in which tree layout, scanned or not."""
    return checkpoint_tree.detect(self.paths, self.custom_metadata)

  def spec(self, path: str) -> tuple[tuple[int, ...], str]:
    """(shape, zarr dtype name) of an array, from its metadata only."""
    store = self.array(path)
    return tuple(store.shape), store.dtype.name

  def specs(self, paths: Sequence[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """`spec` of many arrays, their metadata read concurrently (one round trip, not one per array, on gs://)."""
    pending = {p: self._open(p) for p in paths if p not in self._stores}
    for path, future in pending.items():
      self._stores[path] = self._opened(path, future)
    return {p: self.spec(p) for p in paths}

  def scan_layers(self) -> bool | None:
    """The layout the checkpoint was saved with: _CHECKPOINT_METADATA first, else the tree itself."""
    return self.tree.scan_layers

  def read_slice(self, path: str, fixed: Sequence[tuple[int, int]] = (),
                 window: orbax_layout.Window | None = None) -> ts.Future | chunk_decode.Decoding:
    """Starts reading the array with the (axis, position) pairs of `fixed` taken out (a layer),
    cut to the row block `window` = (axis, start, stop) when given."""
    return self.read_region(path, orbax_layout.region(self.array(path).rank, fixed, window))

  def read_region(self, path: str, expr: tuple) -> ts.Future | chunk_decode.Decoding:
    """Starts reading the region `expr` (per axis a position or a slice): decoded here from a local
    disk when the encoding allows (transforms/chunk_decode.py), else by tensorstore."""
    if path not in self._decoders:
      store = self.array(path)
      self._decoders[path] = chunk_decode.decoder(self.items, path, store.spec().to_json()["metadata"],
                                                  store.dtype.numpy_dtype, self.use_ocdbt)
    decoder = self._decoders[path]
    if decoder is not None:
      return decoder.read(expr)
    store = self.array(path)
    return store[expr].read() if expr else store.read()

  def read(self, path: str, index: tuple = ()) -> np.ndarray:
    """The array at `path`, or the part of it that the numpy-style `index` selects."""
    store = self.array(path)
    return np.asarray((store[index] if index else store).read().result())

  def result(self, future: ts.Future, path: str, fixed: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """A started read's value; a chunk that is missing or corrupt is a one-line error."""
    try:
      return np.asarray(future.result())
    except ValueError as e:  # tensorstore: a chunk that should be there is not (NOT_FOUND), or is corrupt
      raise ConversionError(f"{self.items}: cannot read {path} {list(fixed)}: {str(e).splitlines()[0][:300]}; "
                            "the checkpoint is incomplete or damaged") from None


@functools.lru_cache(maxsize=8)
def shared_reader(items: str) -> CheckpointReader:
  """One reader per checkpoint per process: workers open each array once, whatever element they convert."""
  return CheckpointReader(items)


@dataclasses.dataclass(frozen=True)
class OrbaxRef:
  """A conversion source that is one slice of a MaxText checkpoint array, already in MaxText's layout.

  `index` fixes the array's stacked axes ((axis, position) pairs: a layer, an expert), `shape` is
  the slice that remains. Like a safetensors TensorRef, `read(rows)` may read a block of it:
  positions [start, stop) of the slice's axis `row_axis`. `name` is unique per slice
  (`params/params/decoder/layers/mlp/wi_0/kernel[:, 3, :]`): the manifest's key for its CRC-32C.

  `span` lists the stacked axes whose stored chunks hold several positions, (axis, chunk size):
  MaxText's own scanned checkpoints keep every layer in each chunk. Slices that share those chunks
  are read together (`read_together`), so each chunk is decoded once, not once per layer.
  """
  items: str
  array: str
  name: str
  index: tuple[tuple[int, int], ...]
  shape: tuple[int, ...]
  dtype: str
  row_axis: int = 0
  span: tuple[tuple[int, int], ...] = ()

  def shared_chunks(self, rows: tuple[int, int] | None) -> tuple | None:
    """What slices read together share (None: this slice's chunks are its own)."""
    if not self.span:
      return None
    sizes = dict(self.span)
    return (self.items, self.array, rows, tuple((a, p // sizes[a]) if a in sizes else (a, p) for a, p in self.index))

  @property
  def file(self) -> str:
    return self.items

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * orbax_layout.NUMPY_DTYPES[self.dtype].itemsize

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    if rows is None or not self.shape:
      return self.nbytes
    return self.nbytes // max(self.shape[self.row_axis], 1) * (rows[1] - rows[0])

  @property
  def window_axis(self) -> int:
    """The array axis that `row_axis` of the slice is."""
    fixed = dict(self.index)
    return [a for a in range(len(self.shape) + len(fixed)) if a not in fixed][self.row_axis]

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    reader = shared_reader(self.items)
    window = None if rows is None else (self.window_axis, *rows)
    return reader.result(reader.read_slice(self.array, self.index, window), self.array, self.index)


def read_together(refs: Sequence[OrbaxRef], rows: tuple[int, int] | None) -> list[np.ndarray]:
  """Slices that share stored chunks (the same `shared_chunks`), read with one read of the chunks'
  positions on the spanned axes and cut apart: each chunk is decoded once for all of them."""
  first = refs[0]
  reader = shared_reader(first.items)
  store = reader.array(first.array)
  spanned = dict(first.span)
  expr = [slice(None)] * store.rank
  for axis, position in first.index:
    if axis in spanned:
      start = position // spanned[axis] * spanned[axis]
      expr[axis] = slice(start, min(start + spanned[axis], store.shape[axis]))
    else:
      expr[axis] = position
  if rows is not None:
    expr[first.window_axis] = slice(*rows)
  block = reader.result(reader.read_region(first.array, tuple(expr)), first.array, first.index)
  kept = [a for a, e in enumerate(expr) if isinstance(e, slice)]  # the block's axes, in order
  out = []
  for ref in refs:
    take = [slice(None)] * block.ndim
    for axis, position in ref.index:
      if axis in spanned:
        take[kept.index(axis)] = position - expr[axis].start
    out.append(block[tuple(take)])
  return out


def slice_name(array: str, rank: int, index: Sequence[tuple[int, int]]) -> str:
  """`array[:, 3, :]`: an array path and the stacked positions of one slice (the whole array: its path)."""
  if not index:
    return array
  fixed = dict(index)
  return f"{array}[{', '.join(str(fixed[a]) if a in fixed else ':' for a in range(rank))}]"
