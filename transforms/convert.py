"""One parameter's tensor math in both directions, as pure functions of the source values.

`param` is a family's models.spec.Param: its axes, value ops and `part`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from transforms.tensor_ops import rearrange


def hf_to_maxtext(sources: Sequence[np.ndarray], param: Any, sizes: Mapping[str, Any]) -> np.ndarray:
  """The MaxText value (one layer's slice when stacked) of `param`, often a view of the source.

  A `part` parameter takes its index along the named axis of a fused HF tensor. Value ops run
  in float32 where they scale; the cast to the save dtype is left to the writer so that it
  happens once, block by block.
  """
  (source,) = sources
  if param.part is None:
    value = rearrange(source, param.hf_axes, param.mt_axes, sizes)
  else:
    axis, index = param.part
    value = rearrange(source, param.hf_axes, f"{param.mt_axes} {axis}", sizes)[..., index]
  for op in param.ops:
    value = op.forward(value, sizes)
  return value


def maxtext_to_hf(values: Sequence[np.ndarray], params: Sequence[Any], sizes: Mapping[str, Any]) -> np.ndarray:
  """The HF tensor from its MaxText value(s): one, or every part of a fused tensor.

  Undoes the value ops in reverse order, joins the parts, then undoes the layout; the result is
  often a transposed view, which the writer copies (tiled) while casting to the output dtype.
  """
  undone = []
  for value, param in zip(values, params):
    for op in reversed(param.ops):
      value = op.inverse(value, sizes)
    undone.append(value)
  first = params[0]
  if first.part is None:
    (value,) = undone
    return rearrange(value, first.mt_axes, first.hf_axes, sizes)
  axis = first.part[0]
  ordered = [v for _, v in sorted(zip((p.part[1] for p in params), undone), key=lambda pv: pv[0])]
  if len(ordered) != sizes[axis]:
    raise ValueError(f"{first.hf}: {len(ordered)} of {sizes[axis]} parts along {axis}")
  return rearrange(np.stack(ordered, axis=-1), f"{first.mt_axes} {axis}", first.hf_axes, sizes)
