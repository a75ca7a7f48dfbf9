"""Pure tensor math shared by every model family, each op with its exact inverse.

Layout changes (transpose, split/merge of head axes) are expressed with named axes, einops style:
`"(heads head_dim) embed"` is a 2-D tensor whose first axis is heads*head_dim. `rearrange` returns a
view whenever numpy can, so the caller materialises only what it writes.

Value ops (`RopeInterleave`, `Scale`) act on an array already in MaxText's layout. `forward` goes HF
-> MaxText, `inverse` goes back; both are pure and tested for `inverse(forward(x)) == x`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Mapping

import numpy as np

from transforms import cpu_pool

Sizes = Mapping[str, int]


@functools.lru_cache(maxsize=None)  # a family has a few dozen; a plan parses them per task
def parse_axes(axes: str) -> tuple[tuple[str, ...], ...]:
  """'(heads head_dim) embed' -> (('heads', 'head_dim'), ('embed',))."""
  groups: list[tuple[str, ...]] = []
  current: list[str] | None = None
  for token in axes.replace("(", " ( ").replace(")", " ) ").split():
    if token == "(":
      if current is not None:
        raise ValueError(f"nested group in axes {axes!r}")
      current = []
    elif token == ")":
      if not current:
        raise ValueError(f"empty or unopened group in axes {axes!r}")
      groups.append(tuple(current))
      current = None
    elif current is not None:
      current.append(token)
    else:
      groups.append((token,))
  if current is not None:
    raise ValueError(f"unclosed group in axes {axes!r}")
  return tuple(groups)


def axes_shape(axes: str, sizes: Sizes) -> tuple[int, ...]:
  """The shape a tensor with these named axes has, given each elementary axis's size."""
  return tuple(math.prod(sizes[a] for a in group) for group in parse_axes(axes))


def rearrange(x: np.ndarray, src: str, dst: str, sizes: Sizes) -> np.ndarray:
  """Moves `x` from axes `src` to axes `dst` (same elementary axes, any grouping and order)."""
  src_groups, dst_groups = parse_axes(src), parse_axes(dst)
  src_elems = [a for g in src_groups for a in g]
  dst_elems = [a for g in dst_groups for a in g]
  if sorted(src_elems) != sorted(dst_elems) or len(set(src_elems)) != len(src_elems):
    raise ValueError(f"cannot rearrange {src!r} to {dst!r}")
  if tuple(x.shape) != axes_shape(src, sizes):
    raise ValueError(f"shape {list(x.shape)} is not {src!r} = {list(axes_shape(src, sizes))}")
  x = x.reshape([sizes[a] for a in src_elems])
  perm = [src_elems.index(a) for a in dst_elems]
  if perm != sorted(perm):
    x = x.transpose(perm)
  target = axes_shape(dst, sizes)
  return x if tuple(x.shape) == target else x.reshape(target)


@dataclasses.dataclass(frozen=True)
class RopeInterleave:
  """HF's rotate-half RoPE order (x1..xn/2, y1..yn/2) <-> MaxText's interleaved pairs (x1 y1 x2 y2 ...).

  Acts on the last axis (head_dim) of a q or k kernel in MaxText layout.
  """

  def forward(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.stack([x[..., :half], x[..., half:]], axis=-1).reshape(x.shape)

  def inverse(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


@dataclasses.dataclass(frozen=True)
class Scale:
  """Multiplies by `sizes[factor]` (e.g. 1/sqrt(head_dim) folded into the query), wider than the input.

  16-bit inputs are computed in float32, exactly as MaxText's converter does (so bf16 results are
  bit-identical to its output); float32 inputs in float64, so a float32 round trip rounds once
  each way. The result stays wide: the single rounding to the save dtype happens at the write.
  """
  factor: str

  def forward(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return _scaled(x, sizes[self.factor])

  def inverse(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return _scaled(x, 1.0 / sizes[self.factor])


def _scaled(x: np.ndarray, factor: float) -> np.ndarray:
  wide = np.float32 if x.dtype.itemsize <= 2 else np.float64
  return x.astype(wide) * wide(factor)


# A transposing copy moves PACKED_ITEMs: k = 16 / itemsize neighbouring source rows are first
# interleaved (a streaming copy), so that each k-element group is one 16-byte item of the transposed
# result; the transposition then moves k times fewer items, in square tiles that keep both its read
# and its write side in cache. On a (14336, 4096) bf16 matrix: ~0.7 GB/s, against 0.22 GB/s for
# 256-square tiles of single elements and 0.13 GB/s for numpy's own strided copy. Any 16-byte dtype
# numpy copies as raw bytes will do; void items copy 2x slower than complex128.
PACKED_ITEM = np.dtype(np.complex128)
COPY_TILE = 64
# Columns interleaved at a time: the staging block (COPY_TILE x STAGING_COLS items) stays in cache.
STAGING_COLS = 512
# Below this many elements numpy's own copy is faster than the tiles' Python loop.
SMALL_COPY = 2**16
# A transposing copy is split among the CPUs in bands of at least this many bytes.
PARALLEL_COPY = 16 * 2**20
_UNSIGNED = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


def contiguous(x: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
  """A C-contiguous copy of `x` cast to `dtype`, transposed in packed tiles when `x` is a transposed view."""
  dtype = np.dtype(dtype or x.dtype)
  if x.ndim < 2 or x.flags.c_contiguous or x.size < SMALL_COPY:
    return np.ascontiguousarray(x, dtype)
  matrix = _as_transposed_matrix(x)
  if matrix is None:
    return np.ascontiguousarray(x, dtype)
  out = transpose_copy(matrix.T)
  return (out if out.dtype == dtype else out.astype(dtype)).reshape(x.shape)


def transpose_copy(a: np.ndarray) -> np.ndarray:
  """`a.T` as a new C-contiguous array, bit for bit, for a 2-D `a` whose rows are dense.

  The copies move the bits as unsigned integers of the item's size, never through the dtype's own
  copy function (ml_dtypes' bfloat16 copies element by element, several times slower). Large
  matrices are cut into bands of source rows, one task each on the CPU pool: numpy lets go of the
  GIL in each tile's copy, so the bands (and the kernel's zeroing of the fresh pages they write)
  run on every core.
  """
  rows, cols = a.shape
  out = np.empty((cols, rows), a.dtype)
  src, dst = _as_native(a), _as_native(out)
  k = PACKED_ITEM.itemsize // a.itemsize if PACKED_ITEM.itemsize % a.itemsize == 0 else 1
  packed_rows = rows - rows % k if k > 1 else 0
  if packed_rows:
    step = COPY_TILE * k
    bands = max(1, min(os.cpu_count() or 1, a.nbytes // PARALLEL_COPY, packed_rows // step))
    edges = [packed_rows * b // bands // step * step for b in range(bands)] + [packed_rows]
    copy = functools.partial(_transpose_band, src, dst[:, :packed_rows].view(PACKED_ITEM), k)
    if bands == 1:
      copy(0, packed_rows)
    else:
      for job in [cpu_pool.pool("copy").submit(copy, lo, hi) for lo, hi in zip(edges, edges[1:])]:
        job.result()
  for i in range(packed_rows, rows, COPY_TILE):
    for j in range(0, cols, COPY_TILE):
      dst[j:j + COPY_TILE, i:i + COPY_TILE] = src[i:i + COPY_TILE, j:j + COPY_TILE].T
  return out


def _transpose_band(src: np.ndarray, target: np.ndarray, k: int, start: int, stop: int) -> None:
  """Source rows [start, stop) (a multiple of k) into `target`, the transposed result as packed items."""
  cols = src.shape[1]
  staging = np.empty((COPY_TILE, STAGING_COLS, k), src.dtype)
  for i in range(start, stop, COPY_TILE * k):
    block = src[i:min(i + COPY_TILE * k, stop)]
    n = block.shape[0] // k
    for j0 in range(0, cols, STAGING_COLS):
      width = min(STAGING_COLS, cols - j0)
      interleaved = staging[:n, :width]
      for r in range(k):
        interleaved[:, :, r] = block[r::k, j0:j0 + width]
      items = interleaved.view(PACKED_ITEM).reshape(n, width)
      for j in range(0, width, COPY_TILE):
        target[j0 + j:j0 + j + COPY_TILE, i // k:i // k + n] = items[:, j:j + COPY_TILE].T


def _as_native(x: np.ndarray) -> np.ndarray:
  """`x` viewed as unsigned integers of its item size (itself when there are none of that size)."""
  native = _UNSIGNED.get(x.itemsize)
  return x if native is None or x.dtype == native else x.view(native)


def _as_transposed_matrix(x: np.ndarray) -> np.ndarray | None:
  """`x` viewed (without copying) as a 2-D matrix whose rows are strided and columns dense."""
  for k in range(1, x.ndim):
    try:
      matrix = x.reshape(math.prod(x.shape[:k]), math.prod(x.shape[k:]), copy=False)
    except ValueError:
      continue
    if matrix.strides[0] == x.itemsize:
      return matrix
  return None


@dataclasses.dataclass(frozen=True)
class Offset:
  """Adds `amount`, computed wider than the input like `Scale`.

  For RMSNorm scales that one side stores as w and the other as w + 1.
  """
  amount: float

  def forward(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return _offset(x, self.amount)

  def inverse(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return _offset(x, -self.amount)


def _offset(x: np.ndarray, amount: float) -> np.ndarray:
  wide = np.float32 if x.dtype.itemsize <= 2 else np.float64
  return x.astype(wide) + wide(amount)


@dataclasses.dataclass(frozen=True)
class ResizeAxis:
  """Pads with zeros or truncates `axis` from `sizes[source]` (HF) to `sizes[target]` (MaxText).

  MaxText sizes some embeddings to its own vocabulary: Gemma2's 256000 rows are padded to
  256128, Gemma3's 262208 truncated to 262144. Truncated rows cannot come back; they return as
  zeros, as they would from MaxText's own converter.
  """
  axis: int
  source: str = "vocab"
  target: str = "maxtext_vocab"

  def shape(self, shape: tuple[int, ...], sizes: Sizes) -> tuple[int, ...]:
    return shape[:self.axis] + (self._target(sizes),) + shape[self.axis + 1:]

  def forward(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return _resize(x, self.axis, self._target(sizes))

  def _target(self, sizes: Sizes) -> int:
    return sizes.get(self.target) or sizes[self.source]

  def inverse(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return _resize(x, self.axis, sizes[self.source])


def _resize(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  if x.shape[axis] >= size:
    return x[(slice(None),) * axis + (slice(0, size),)]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return np.pad(x, pad)


@dataclasses.dataclass(frozen=True)
class GroupByHead:
  """Segments laid end to end on the last axis, each head-major ([q of every head | k of every
  head | ...]) <-> the same values grouped per head ([q k ... of head 0 | of head 1 | ...]).

  How MaxText's gated DeltaNet holds the projections HF keeps apart (Qwen3.5's in_proj_qkv + in_proj_z
  -> in_proj_qkvz, in_proj_b + in_proj_a -> in_proj_ba). `segments` name each segment's width per
  head, `heads` the number of heads. A permutation: exact both ways in any dtype.
  """
  heads: str
  segments: tuple[str, ...]

  def forward(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    heads, widths = sizes[self.heads], [sizes[s] for s in self.segments]
    parts = np.split(x, np.cumsum([heads * w for w in widths])[:-1], axis=-1)
    grouped = [p.reshape(*x.shape[:-1], heads, w) for p, w in zip(parts, widths)]
    return np.concatenate(grouped, axis=-1).reshape(x.shape)

  def inverse(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    heads, widths = sizes[self.heads], [sizes[s] for s in self.segments]
    grouped = np.split(x.reshape(*x.shape[:-1], heads, sum(widths)), np.cumsum(widths)[:-1], axis=-1)
    return np.concatenate([p.reshape(*x.shape[:-1], heads * w) for p, w in zip(grouped, widths)], axis=-1)


@dataclasses.dataclass(frozen=True)
class Regroup:
  """Rearranges the value from axes `src` to `dst` (same elementary axes), e.g. "r heads head_dim" ->
  "r (heads head_dim)": for arrays whose ops need the axes apart but which are stored merged.

  Its `shape` is `dst`'s, so the planner sizes the stored array by it.
  """
  src: str
  dst: str

  def shape(self, shape: tuple[int, ...], sizes: Sizes) -> tuple[int, ...]:
    return axes_shape(self.dst, sizes)

  def forward(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return rearrange(x, self.src, self.dst, sizes)

  def inverse(self, x: np.ndarray, sizes: Sizes) -> np.ndarray:
    return rearrange(x, self.dst, self.src, sizes)
