"""One parameter's tensor math in both directions, as pure functions of the source values."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from models.spec import Param
from transforms.tensor_ops import rearrange


def hf_to_maxtext(sources: Sequence[np.ndarray], param: Param, sizes: Mapping[str, Any]) -> np.ndarray:
  """The MaxText value (one layer's slice when stacked) of `param`, often a view of the source.

  Value ops run in float32 where they scale; the cast to the save dtype is left to the writer so
  that it happens once, block by block.
  """
  (source,) = sources
  value = rearrange(source, param.hf_axes, param.mt_axes, sizes)
  for op in param.ops:
    value = op.forward(value, sizes)
  return value


def maxtext_to_hf(value: np.ndarray, param: Param, sizes: Mapping[str, Any]) -> np.ndarray:
  """The HF tensor of `param` from its MaxText value (one layer's slice when stacked).

  Undoes the value ops in reverse order, then the layout; the result is often a transposed view,
  which the writer copies (tiled) while casting to the output dtype.
  """
  for op in reversed(param.ops):
    value = op.inverse(value, sizes)
  return rearrange(value, param.mt_axes, param.hf_axes, sizes)
