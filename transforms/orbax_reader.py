"""Reads slices of an Orbax checkpoint with tensorstore alone (no jax, no orbax).

The storage layout is read from the checkpoint itself: `_METADATA` says zarr3 or zarr v2, and a
`manifest.ocdbt` means one OCDBT database rather than a directory per array.
"""
from __future__ import annotations

import ast
import json
from typing import Any, Sequence

import numpy as np
import tensorstore as ts

from transforms.errors import ConversionError
from transforms import orbax_layout, orbax_writer, storage, writer_lock
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
    self.use_ocdbt = storage.exists(storage.join(items, "manifest.ocdbt"))
    self._stores: dict[str, ts.TensorStore] = {}

  def _kvstore(self, path: str) -> dict[str, Any]:
    key = orbax_layout.array_key(path)
    if self.use_ocdbt:
      return {"driver": "ocdbt", "base": storage.kvstore_spec(self.items), "path": key}
    return storage.kvstore_spec(storage.join(self.items, key))

  def array(self, path: str) -> ts.TensorStore:
    store = self._stores.get(path)
    if store is None:
      # A missing chunk is an error, never zeros (Orbax's raise_array_data_missing_error).
      spec = {"driver": "zarr3" if self.use_zarr3 else "zarr", "kvstore": self._kvstore(path), "open": True,
              "fill_missing_data_reads": False}
      try:
        store = ts.open(spec, context=ts_context(), read=True).result()
      except ValueError as e:
        raise ConversionError(f"{self.items}: cannot open array {path}: {e}") from None
      self._stores[path] = store
    return store

  @property
  def paths(self) -> list[str]:
    """Every array's tree path ('params/params/decoder/...'), from _METADATA."""
    return sorted("/".join(ast.literal_eval(key)) for key in self.metadata.get("tree_metadata", {}))

  def spec(self, path: str) -> tuple[tuple[int, ...], str]:
    """(shape, zarr dtype name) of an array, from its metadata only."""
    store = self.array(path)
    return tuple(store.shape), store.dtype.name

  def scan_layers(self) -> bool | None:
    """The layout the checkpoint was saved with: _CHECKPOINT_METADATA first, else the tree itself."""
    step_metadata = storage.join(storage.parent(self.items), orbax_layout.CHECKPOINT_METADATA)
    if storage.exists(step_metadata):
      custom = json.loads(storage.read_text(step_metadata)).get("custom_metadata") or {}
      if isinstance(custom.get("scan_layers"), bool):
        return custom["scan_layers"]
    paths = self.paths
    if any(p.startswith(("params/params/decoder/layers/", "params/params/decoder/scanned_blocks/")) for p in paths):
      return True
    if any(p.startswith("params/params/decoder/layers_") for p in paths):
      return False
    return None

  def read_slice(self, path: str, fixed: Sequence[tuple[int, int]] = (),
                 window: orbax_layout.Window | None = None) -> ts.Future:
    """Starts reading the array with the (axis, position) pairs of `fixed` taken out (a layer),
    cut to the row block `window` = (axis, start, stop) when given."""
    store = self.array(path)
    if not fixed and window is None:
      return store.read()
    return store[orbax_layout.region(store.rank, fixed, window)].read()

  def read(self, path: str, index: tuple = ()) -> np.ndarray:
    """The array at `path`, or the part of it that the numpy-style `index` selects."""
    store = self.array(path)
    return np.asarray((store[index] if index else store).read().result())
