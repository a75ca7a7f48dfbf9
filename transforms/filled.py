"""A MaxText array with no HF tensor behind it, as a source that reads nothing.

DeepSeek V4's MaxText model has an RMSNorm scale in each hyper-connection that its released
checkpoints do not (the norm is unweighted there); MaxText's converter fills it with ones. The
plan carries it like any source so one task writes it, but no file is opened for it.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FilledRef:
  """`shape` float32 values all `value`, named `name` in messages."""
  name: str
  shape: tuple[int, ...]
  value: float

  dtype = "F32"
  nbytes = 0
  files: tuple[str, ...] = ()  # no file is read for it
  file = ""

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    return 0

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    shape = self.shape if rows is None else (rows[1] - rows[0], *self.shape[1:])
    return np.full(shape, self.value, np.float32)
