"""Splits tensors bigger than a threshold into row blocks, so a worker's memory is bounded by the
largest block, not the largest tensor (a 405B's 4 GB embedding, GPT-OSS's 4 GB fused experts).

A block is a range of the HF tensor's first axis: contiguous bytes in a safetensors file, so one
ranged read. It is cut in whole units of that axis's outermost name (`heads` of `(heads head_dim)`,
`vocab`, `experts`), so every value op still sees whole heads. On the MaxText side the same name
must lead its own axis; the array is then chunked along that axis one block wide, so blocks written
by different workers never share a chunk. Parameters whose layout does not allow it stay whole.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from models.spec import Param
from transforms.tensor_ops import parse_axes

# Elements above this many bytes (read or written) are split: small enough that a worker holds a
# few at once in a few GB, large enough that per-element overhead stays negligible.
SPLIT_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class RowBlock:
  """Units [start, stop) of the split name: HF rows `rows`, array positions `positions` along the
  split axis, and the axis sizes the transforms see for this block (`sizes`, overriding the model's)."""
  start: int
  stop: int
  rows: tuple[int, int]
  positions: tuple[int, int]
  sizes: tuple[tuple[str, int], ...]

  def with_sizes(self, sizes: Mapping[str, Any]) -> dict[str, Any]:
    return {**sizes, **dict(self.sizes)}


@dataclasses.dataclass(frozen=True)
class Split:
  """How one parameter's tensor divides: `name` leads the HF first axis and one MaxText axis."""
  name: str
  hf_rows_per_unit: int
  slice_axis: int
  positions_per_unit: int
  hf_units: int
  mt_units: int
  units_per_block: int
  resized: tuple[str, ...]

  @property
  def chunk(self) -> int:
    """The array's chunk size along the split axis: one block."""
    return self.units_per_block * self.positions_per_unit

  def blocks(self) -> list[RowBlock]:
    """Blocks covering both sides: MaxText's extent (padding rows) and HF's (truncated rows)."""
    out = []
    for start in range(0, max(self.hf_units, self.mt_units), self.units_per_block):
      stop = start + self.units_per_block
      hf = (min(start, self.hf_units), min(stop, self.hf_units))
      mt = (min(start, self.mt_units), min(stop, self.mt_units))
      sizes = ((self.name, hf[1] - hf[0]),) + tuple((target, mt[1] - mt[0]) for target in self.resized)
      out.append(RowBlock(start, stop, (hf[0] * self.hf_rows_per_unit, hf[1] * self.hf_rows_per_unit),
                          (mt[0] * self.positions_per_unit, mt[1] * self.positions_per_unit), sizes))
    return out


def find_split(param: Param, sizes: Mapping[str, Any], mt_slice_shape: tuple[int, ...], hf_itemsize: int,
               mt_itemsize: int, limit: int = SPLIT_BYTES) -> Split | None:
  """The split of `param`'s tensor into blocks of at most about `limit` bytes, or None when it is
  small enough or its layout keeps it whole."""
  hf_groups = parse_axes(param.hf_axes)
  if not hf_groups:
    return None
  name = hf_groups[0][0]
  if param.part is not None and param.part[0] == name or param.piece is not None or param.segment is not None:
    return None
  mt_groups = parse_axes(param.mt_axes)
  slice_axis = next((i for i, g in enumerate(mt_groups) if g[0] == name), None)
  if slice_axis is None:
    return None
  resized = tuple(op.target for op in param.ops if getattr(op, "source", None) == name)
  if any(hasattr(op, "shape") and getattr(op, "source", None) != name for op in param.ops):
    return None
  hf_rows_per_unit = math.prod(sizes[a] for a in hf_groups[0][1:])
  positions_per_unit = math.prod(sizes[a] for a in mt_groups[slice_axis][1:])
  hf_units = sizes[name]
  mt_units = mt_slice_shape[slice_axis] // positions_per_unit
  hf_unit_bytes = hf_rows_per_unit * math.prod(math.prod(sizes[a] for a in g) for g in hf_groups[1:]) * hf_itemsize
  mt_unit_bytes = math.prod(mt_slice_shape) // mt_slice_shape[slice_axis] * positions_per_unit * mt_itemsize
  unit_bytes = max(hf_unit_bytes, mt_unit_bytes, 1)
  if unit_bytes * max(hf_units, mt_units) <= limit:
    return None
  units_per_block = max(1, limit // unit_bytes)
  return Split(name, hf_rows_per_unit, slice_axis, positions_per_unit, hf_units, mt_units, units_per_block, resized)
