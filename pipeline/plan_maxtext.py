"""The plan of MaxText -> MaxText: a checkpoint's parameter slices in, the same Plan as from HF out.

Re-laying out layers (scan <-> unscan, MaxText's force_unroll), keeping a training state's parameters
alone (generate_param_only_checkpoint), changing the saved dtype or the storage (McJAX <-> Pathways,
reshard_checkpoint) are one conversion: every slice of the target is a slice of a source array,
already in MaxText's layout. So the plan is planner.plan_slices' own, with `OrbaxRef` sources read
through transforms/orbax_reader.py, and the pipeline, resume, manifest and verify are to_maxtext's.

Reads only `_METADATA`, `_CHECKPOINT_METADATA` and the parameter arrays' zarr metadata: an optimizer
state (`opt_state`) and NNX's rng state (`nnx_aux`) are never opened.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from models.spec import Family
from pipeline.planner import (SAVE_DTYPES, Placement, Plan, SourceRef, check_save_dtype, config_hint, detect_family,
                              family_sizes, placements, plan_slices, split_by_rows, with_options)
from pipeline.row_blocks import SPLIT_BYTES, RowBlock, Split
from transforms import orbax_layout
from transforms.errors import ConversionError
from transforms.orbax_reader import CheckpointReader, OrbaxRef, slice_name

# generate_param_only_checkpoint casts every parameter of a training state to bfloat16.
PARAMETER_ONLY_DTYPE = "bfloat16"


class CheckpointSlices:
  """planner.SliceSources over a MaxText checkpoint: each placement's slice in the source's own layout.

  Saved dtypes: `save_dtype` for every array when given; else a training state's parameters are cast
  to bfloat16 (as generate_param_only_checkpoint does) and a parameter checkpoint keeps each array's.
  """

  def __init__(self, family: Family, sizes: dict[str, Any], refs: dict[tuple[int, str], OrbaxRef],
               chunks: dict[str, tuple[int, ...]], save_dtype: str | None, full_state: bool):
    self.family, self.sizes, self.refs, self.chunks = family, sizes, refs, chunks
    self.save_dtype, self.full_state = save_dtype, full_state

  def find(self, place: Placement) -> SourceRef:
    return self.refs[(self.family.key(place.param), place.hf_name)]

  def dtype(self, place: Placement, ref: SourceRef) -> str:
    if self.save_dtype:
      return self.save_dtype
    return PARAMETER_ONLY_DTYPE if self.full_state else ref.dtype

  def block(self, ref: SourceRef, split: Split, block: RowBlock) -> tuple[SourceRef, RowBlock]:
    """Both sides are MaxText slices: the block reads the same positions of the same axis it writes."""
    return dataclasses.replace(ref, row_axis=split.slice_axis), dataclasses.replace(block, rows=block.positions)

  def split(self, place: Placement, ref: SourceRef, itemsize: int, split_bytes: int) -> Split | None:
    """As from HF, unless the source's chunks hold several layers: then blocks follow the source's chunk
    grid, so the slices read together (all layers of a block) decode each chunk once, about
    `split_bytes` at a time."""
    if not ref.span:
      return split_by_rows(place, ref, self.sizes, itemsize, split_bytes)
    fixed = dict(ref.index)
    free = [c for a, c in enumerate(self.chunks[ref.array]) if a not in fixed]
    axis = next((i for i, (c, n) in enumerate(zip(free, ref.shape)) if c < n), None)
    if axis is None:
      return None  # one chunk across the slice: read whole
    together = math.prod(size for _, size in ref.span)
    unit_bytes = ref.nbytes // ref.shape[axis] * together
    per_block = max(free[axis], split_bytes // max(unit_bytes, 1) // free[axis] * free[axis])
    if per_block >= ref.shape[axis]:
      return None
    return Split("positions", 1, axis, 1, ref.shape[axis], ref.shape[axis], per_block, ())


def plan_from_maxtext(items: str, config: dict[str, Any], where: str, model_name: str | None = None,
                      scan_layers: bool | None = None, save_dtype: str | None = None,
                      chunk_split: int = orbax_layout.DEFAULT_SPLIT, use_multimodal: bool = False,
                      vocab_size: int | None = None, split_bytes: int = SPLIT_BYTES,
                      full_state: bool = False) -> Plan:
  """Plans MaxText -> MaxText from metadata; raises ConversionError when the tree is not this model's.

  `config` (an HF config.json, from `where`) gives the family and dimensions; `scan_layers` is the
  target layout (None: the source's). The target tree is the kind MaxText writes for the source:
  Linen `params/params/...` + `step` from a Linen checkpoint, NNX parameter-only `.../value` from an NNX one.
  """
  check_save_dtype(save_dtype)
  reader = CheckpointReader(items)
  tree = reader.tree
  tree.require_model(items)
  if full_state and not tree.train_state:
    raise ConversionError(f"{items}: holds no optimizer state, so it is not a training state; pass it as "
                          "load_parameters_path= instead of load_full_state_path=")
  layout = tree.scan_layers
  if layout is None:
    raise ConversionError(f"{items}: no decoder layers in the checkpoint tree; is it a MaxText checkpoint?")
  config = with_options(config, use_multimodal, model_name, vocab_size)
  family = detect_family(config, model_name, where)
  sizes = family_sizes(family, config, where)
  refs, chunks = _slices(reader, family, placements(family, config, sizes, layout), where)
  target_scan = layout if scan_layers is None else scan_layers
  sources = CheckpointSlices(family, sizes, refs, chunks, save_dtype, full_state)
  arrays, tasks = plan_slices(family, config, sizes, target_scan, sources, chunk_split, split_bytes,
                              tree.parameter_only_layout)
  read = {s.array for t in tasks for s in t.sources}
  unused = tuple(sorted(p for p in tree.params.values() if p not in read))
  kept = save_dtype or (PARAMETER_ONLY_DTYPE if full_state else "as stored")
  return Plan(family=family.name, sizes=sizes, scan_layers=target_scan, save_dtype=kept, arrays=arrays, tasks=tasks,
              unused=unused, tree=tree.parameter_only_layout, source=items)


def _slices(reader: CheckpointReader, family: Family, places: list[Placement],
            where: str) -> tuple[dict[tuple[int, str], OrbaxRef], dict[str, tuple[int, ...]]]:
  """Each placement's slice of the source, keyed by (parameter, HF name): the same in every layout;
  and each source array's stored chunk shape."""
  tree = reader.tree
  specs = reader.specs(sorted({tree.stored(p.model_path) for p in places} - {None}))
  refs = {}
  chunks = {}
  for place in places:
    array = tree.stored(place.model_path)
    if array is None:
      raise ConversionError(f"{reader.items}: no array {tree.layout.stored(place.model_path)}, which a {family.name} "
                            f"model with this config has ({where}){config_hint(where)}")
    shape, dtype = specs[array]
    if shape != place.array_shape:
      raise ConversionError(f"{reader.items}: array {array} has shape {list(shape)} but {where} implies "
                            f"{list(place.array_shape)}; wrong model_name or config?{config_hint(where)}")
    if dtype not in SAVE_DTYPES:
      raise ConversionError(f"{reader.items}: array {array} has dtype {dtype}; only bfloat16 and float32 parameters "
                            "are supported")
    free = tuple(shape[a] for a in place.free_axes)
    chunks[array] = tuple(reader.array(array).chunk_layout.write_chunk.shape or shape)
    span = tuple((a, chunks[array][a]) for a, _ in place.index if chunks[array][a] > 1)
    refs[(family.key(place.param), place.hf_name)] = OrbaxRef(
        reader.items, array, slice_name(array, len(shape), place.index), place.index, free, dtype, span=span)
  return refs, chunks
