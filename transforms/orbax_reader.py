"""Reads slices of an Orbax checkpoint with tensorstore alone (no jax, no orbax).

The storage layout is read from the checkpoint itself: `_METADATA` says zarr3 or zarr v2, and a
`manifest.ocdbt` means one OCDBT database rather than a directory per array.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorstore as ts

from pipeline.errors import ConversionError
from transforms import orbax_layout, storage
from transforms.orbax_writer import ts_context


class CheckpointReader:
  """Opens each array of `items` once, then reads any slice of it."""

  def __init__(self, items: str):
    self.items = items
    metadata_path = storage.join(items, "_METADATA")
    if not storage.exists(metadata_path):
      raise ConversionError(f"{items}: no _METADATA; not an Orbax checkpoint item directory "
                            "(load_parameters_path should end in /0/items)")
    self.metadata: dict[str, Any] = json.loads(storage.read_text(metadata_path))
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
      spec = {"driver": "zarr3" if self.use_zarr3 else "zarr", "kvstore": self._kvstore(path), "open": True}
      try:
        store = ts.open(spec, context=ts_context(), read=True).result()
      except ValueError as e:
        raise ConversionError(f"{self.items}: cannot open array {path}: {e}") from None
      self._stores[path] = store
    return store

  def read(self, path: str, index: tuple = ()) -> np.ndarray:
    """The array at `path`, or the part of it that the numpy-style `index` selects."""
    store = self.array(path)
    return np.asarray((store[index] if index else store).read().result())
