"""Orbax's on-disk format for a MaxText checkpoint, as plain data (no I/O here).

Everything that must be identical across writers (zarr3 metadata, chunk grid, OCDBT options) is
computed here from the plan alone, so every worker derives exactly the same specs.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Iterable, Sequence

import ml_dtypes
import numpy as np

# MaxText's converter shards each array 16 ways (16 simulated devices) along its first axis
# divisible by 16; TPU hosts read those chunks. Ours are never coarser.
DEFAULT_SPLIT = 16
# Orbax caps a chunk at the OCDBT target data file size (2 GiB local, 400 MiB on GCS); we use the
# smaller everywhere so local and gs:// outputs are laid out identically.
MAX_CHUNK_BYTES = 400 * 2**20
# The dtypes a MaxText checkpoint holds, by their zarr3 names.
NUMPY_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32),
                "int64": np.dtype(np.int64)}
PROCESS_PREFIX = "ocdbt.process_"
# Orbax and MaxText write zstd level 3. Level 1 compresses bf16 weights to the same size (0.777 of
# raw on normal-distributed bf16) at 1.7x the speed, so it is ckptflow's default; readers do
# not care which level wrote a chunk.
ORBAX_ZSTD_LEVEL = 3
DEFAULT_ZSTD_LEVEL = 1
ITEMS = "items"
COMMIT_MARKER = "commit_success.txt"
METADATA = "_METADATA"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
# An OCDBT database's root file (manifest_kind "single"); it exists once the database holds anything.
OCDBT_MANIFEST = "manifest.ocdbt"

OCDBT_CONFIG = {
    "max_inline_value_bytes": 1024,
    "max_decoded_node_bytes": 100_000_000,
    "manifest_kind": "single",
    "compression": {"id": "zstd"},
}
# A writer's own sub-database commits once per write, and each commit rewrites the B-tree leaves it
# touches. Under Orbax's settings (one save, one commit) the whole tree is one leaf holding every
# small chunk inline, so a writer committing write by write rewrites all it has written so far: 400
# writes of 16 small chunks took 18 s and left 1.5 GB of dead nodes. With values out of line and
# 64 KiB leaves a commit rewrites a few small nodes (1600 such writes: 5 s, 54 MB). The merged
# manifest.ocdbt keeps Orbax's settings; the merge copies references, whatever the leaves were. A
# sub-database an earlier run made (perhaps under other settings) is reopened with its own.
WRITER_OCDBT_CONFIG = {**OCDBT_CONFIG, "max_inline_value_bytes": 0, "max_decoded_node_bytes": 2**16}


def array_key(path: str) -> str:
  """'params/params/decoder/x/kernel' -> 'params.params.decoder.x.kernel' (Orbax's OCDBT key)."""
  return path.replace("/", ".")


def choose_chunks(shape: Sequence[int], itemsize: int, stacked_axes: Iterable[int] = (),
                  split: int = DEFAULT_SPLIT) -> tuple[int, ...]:
  """Chunk 1 on stacked axes (one writer per chunk), `split`-way on the first other axis it divides.

  Further halves the largest axis while a chunk exceeds MAX_CHUNK_BYTES.
  """
  chunks = list(shape)
  stacked = set(stacked_axes)
  for axis in stacked:
    chunks[axis] = 1
  for axis, n in enumerate(shape):
    if axis not in stacked and n % split == 0 and n >= split:
      chunks[axis] = n // split
      break
  while _prod(chunks) * itemsize > MAX_CHUNK_BYTES:
    axis = max(range(len(chunks)), key=lambda a: chunks[a])
    if chunks[axis] == 1:
      break
    chunks[axis] = (chunks[axis] + 1) // 2
  return tuple(chunks)


def _prod(xs: Iterable[int]) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def zarr3_metadata(shape: Sequence[int], dtype: str, chunks: Sequence[int],
                   zstd_level: int = ORBAX_ZSTD_LEVEL) -> dict[str, Any]:
  """Orbax's zarr3 array metadata: one sharding_indexed shard per chunk, zstd (0: uncompressed)."""
  codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
  if zstd_level:
    codecs.append({"name": "zstd", "configuration": {"level": zstd_level, "checksum": False}})
  return {
      "zarr_format": 3,
      "node_type": "array",
      "shape": list(shape),
      "data_type": dtype,
      "fill_value": 0,
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
      "chunk_key_encoding": {"name": "default"},
      "codecs": [{
          "name": "sharding_indexed",
          "configuration": {
              "chunk_shape": list(chunks),
              "codecs": codecs,
              "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                               {"name": "crc32c"}],
              "index_location": "end",
          },
      }],
  }


ZARR2_DTYPES = {"bfloat16": "bfloat16", "float32": "<f4", "int64": "<i8"}


def zarr2_metadata(shape: Sequence[int], dtype: str, chunks: Sequence[int],
                   zstd_level: int = ORBAX_ZSTD_LEVEL) -> dict[str, Any]:
  """Orbax's zarr v2 metadata (checkpoint_storage_use_zarr3=false)."""
  return {
      "zarr_format": 2,
      "shape": list(shape),
      "chunks": list(chunks),
      "dtype": ZARR2_DTYPES[dtype],
      "fill_value": None,
      "compressor": {"id": "zstd", "level": zstd_level} if zstd_level else None,
      "order": "C",
      "filters": None,
      "dimension_separator": ".",
  }


def pytree_metadata(array_paths: Iterable[str], use_ocdbt: bool, use_zarr3: bool,
                    with_step: bool = True) -> dict[str, Any]:
  """items/_METADATA: the tree (a TrainState's step + params, or the params alone), every value an np.ndarray."""
  tree = {"('step',)": _leaf(("step",), "scalar")} if with_step else {}
  for path in sorted(array_paths):
    keys = tuple(path.split("/"))
    tree[str(keys)] = _leaf(keys, "np.ndarray")
  return {
      "tree_metadata": tree,
      "use_ocdbt": use_ocdbt,
      "use_zarr3": use_zarr3,
      "store_array_data_equal_to_fill_value": True,
      "custom_metadata": None,
  }


def _leaf(keys: tuple[str, ...], value_type: str) -> dict[str, Any]:
  return {
      "key_metadata": [{"key": k, "key_type": 2} for k in keys],
      "value_metadata": {"value_type": value_type, "skip_deserialize": False},
  }


def checkpoint_metadata(scan_layers: bool, init_ns: int, commit_ns: int | None = None,
                        custom: dict[str, Any] | None = None) -> dict[str, Any]:
  """<step>/_CHECKPOINT_METADATA, which MaxText's to_huggingface reads scan_layers (and a LoRA's rank
  and alpha, `custom`["lora"]) from."""
  return {
      "item_handlers": {ITEMS: "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"},
      "metrics": {},
      "performance_metrics": {},
      "init_timestamp_nsecs": init_ns,
      "commit_timestamp_nsecs": commit_ns if commit_ns is not None else time.time_ns(),
      "custom_metadata": {"scan_layers": scan_layers, **(custom or {})},
  }


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """One array of the checkpoint: its tree path, shape, dtype and chunk grid."""
  path: str
  shape: tuple[int, ...]
  dtype: str
  chunks: tuple[int, ...]

  @property
  def key(self) -> str:
    return array_key(self.path)

  def metadata(self, use_zarr3: bool, zstd_level: int) -> dict[str, Any]:
    build = zarr3_metadata if use_zarr3 else zarr2_metadata
    return build(self.shape, self.dtype, self.chunks, zstd_level)


Window = tuple[int, int, int]


def region(ndim: int, index: Sequence[tuple[int, int]], window: Window | None = None) -> tuple:
  """The numpy-style selection of a slice: stacked positions `index` fixed, the row block `window`
  = (axis, start, stop) cut, every other axis whole."""
  expr: list = [slice(None)] * ndim
  for axis, position in index:
    expr[axis] = position
  if window is not None:
    axis, start, stop = window
    expr[axis] = slice(start, stop)
  return tuple(expr)


def chunk_keys(array: ArraySpec, index: Sequence[tuple[int, int]], use_zarr3: bool,
               window: Window | None = None) -> list[str]:
  """The storage keys of every chunk a slice covers (`index`: the fixed stacked positions)."""
  fixed = dict(index)
  ranges = [[fixed[a] // c] if a in fixed else range(-(-n // c)) for a, (n, c) in
            enumerate(zip(array.shape, array.chunks))]
  if window is not None:
    axis, start, stop = window
    ranges[axis] = range(start // array.chunks[axis], -(-stop // array.chunks[axis]))
  keys = []
  for coords in itertools.product(*ranges):
    if use_zarr3:
      keys.append(f"{array.key}/c" + "".join(f"/{i}" for i in coords))
    else:
      keys.append(f"{array.key}/" + (".".join(str(i) for i in coords) or "0"))
  return keys
