"""One parameter's tensor math in both directions, as pure functions of the source values.

`param` is a family's models.spec.Param: its axes, value ops, `part`, `segment` and `piece`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from transforms.tensor_ops import axes_shape, parse_axes, rearrange


def hf_to_maxtext(sources: Sequence[np.ndarray], param: Any, sizes: Mapping[str, Any]) -> np.ndarray:
  """The MaxText value (one layer's slice when stacked) of `param`, often a view of the source.

  A `part` parameter takes its index along the named axis of a fused HF tensor. Value ops run
  in float32 where they scale; the cast to the save dtype is left to the writer so that it
  happens once, block by block. A tuple of `piece` parameters (one per source, in the same order)
  makes the one array they are pieces of.
  """
  if isinstance(param, tuple):
    return _joined(sources, param, sizes)
  (source,) = sources
  if param.segment is not None:
    index, widths = param.segment
    start = sum(sizes[w] for w in widths[:index])
    source = source[start:start + sizes[widths[index]]]
  if param.part is None:
    value = rearrange(source, param.hf_axes, param.mt_axes, sizes)
  else:
    axis, index = param.part
    value = rearrange(source, param.hf_axes, f"{param.mt_axes} {axis}", sizes)[..., index]
  for op in param.ops:
    value = op.forward(value, sizes)
  return value


def maxtext_to_hf(values: Sequence[np.ndarray], params: Sequence[Any], sizes: Mapping[str, Any]) -> np.ndarray:
  """The HF tensor from its MaxText value(s): one, every part of a fused tensor, or the array one
  piece is cut from.

  Undoes the value ops in reverse order, joins the parts, then undoes the layout; the result is
  often a transposed view, which the writer copies (tiled) while casting to the output dtype.
  """
  undone = []
  for value, param in zip(values, params):
    for op in reversed(param.ops):
      value = op.inverse(value, sizes)
    undone.append(value)
  first = params[0]
  if first.segment is not None:
    ordered = sorted(zip(params, undone), key=lambda pv: pv[0].segment[0])
    if [p.segment[0] for p, _ in ordered] != list(range(len(first.segment[1]))):
      raise ValueError(f"{first.hf}: segments {[p.segment[0] for p, _ in ordered]} do not make the whole tensor")
    return np.concatenate([rearrange(v, p.mt_axes, p.hf_axes, sizes) for p, v in ordered], axis=0)
  if first.piece is not None:
    (value,) = undone
    index, widths = first.piece
    start = sum(sizes[w] for w in widths[:index])
    return rearrange(value[..., start:start + sizes[widths[index]]], piece_axes(first), first.hf_axes, sizes)
  if first.part is None:
    (value,) = undone
    return rearrange(value, first.mt_axes, first.hf_axes, sizes)
  axis = first.part[0]
  ordered = [v for _, v in sorted(zip((p.part[1] for p in params), undone), key=lambda pv: pv[0])]
  if len(ordered) != sizes[axis]:
    raise ValueError(f"{first.hf}: {len(ordered)} of {sizes[axis]} parts along {axis}")
  return rearrange(np.stack(ordered, axis=-1), f"{first.mt_axes} {axis}", first.hf_axes, sizes)


def piece_axes(param: Any) -> str:
  """A piece's own axes in MaxText's layout: the array's, with the last axis its segment's width."""
  index, widths = param.piece
  groups = parse_axes(param.mt_axes)[:-1]
  return " ".join([g[0] if len(g) == 1 else f"({' '.join(g)})" for g in groups] + [widths[index]])


def _joined(sources: Sequence[np.ndarray], pieces: Sequence[Any], sizes: Mapping[str, Any]) -> np.ndarray:
  """Every piece in its own MaxText layout, end to end on the last axis in segment order, then the ops."""
  ordered = sorted(zip(pieces, sources), key=lambda ps: ps[0].piece[0])
  if [p.piece[0] for p, _ in ordered] != list(range(len(ordered[0][0].piece[1]))):
    raise ValueError(f"{pieces[0].mt}: pieces {[p.piece[0] for p, _ in ordered]} do not make the whole array")
  value = np.concatenate([rearrange(s, p.hf_axes, piece_axes(p), sizes) for p, s in ordered], axis=-1)
  value = value.reshape(axes_shape(pieces[0].mt_axes, sizes))
  for op in pieces[0].ops:
    value = op.forward(value, sizes)
  return value
