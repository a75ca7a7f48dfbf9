import math

import ml_dtypes
import numpy as np
import pytest

from models.spec import Param
from transforms.convert import hf_to_maxtext, maxtext_to_hf
from transforms.tensor_ops import (GroupByHead, Offset, RopeInterleave, Scale, axes_shape, contiguous, parse_axes,
                                  rearrange)

SIZES = {"embed": 6, "heads": 3, "head_dim": 4, "vocab": 5}


def test_parse_axes_groups():
  assert parse_axes("(heads head_dim) embed") == (("heads", "head_dim"), ("embed",))
  assert axes_shape("(heads head_dim) embed", SIZES) == (12, 6)
  for bad in ("(heads (head_dim)) embed", "(heads head_dim embed", "heads)"):
    with pytest.raises(ValueError):
      parse_axes(bad)


def test_rearrange_matches_transpose_then_reshape():
  x = np.arange(12 * 6).reshape(12, 6)
  y = rearrange(x, "(heads head_dim) embed", "embed heads head_dim", SIZES)
  np.testing.assert_array_equal(y, x.T.reshape(6, 3, 4))
  out = np.arange(6 * 12).reshape(6, 12)
  np.testing.assert_array_equal(rearrange(out, "embed (heads head_dim)", "heads head_dim embed", SIZES),
                                out.T.reshape(3, 4, 6))


@pytest.mark.parametrize("src,dst", [("(heads head_dim) embed", "embed heads head_dim"),
                                     ("embed (heads head_dim)", "heads head_dim embed"),
                                     ("vocab embed", "embed vocab"), ("embed", "embed")])
def test_rearrange_inverse_is_exact(src, dst):
  x = np.random.default_rng(0).standard_normal(axes_shape(src, SIZES)).astype(ml_dtypes.bfloat16)
  back = rearrange(rearrange(x, src, dst, SIZES), dst, src, SIZES)
  assert back.dtype == x.dtype and np.array_equal(back.view(np.uint16), x.view(np.uint16))


def test_rearrange_rejects_wrong_shape_and_axes():
  with pytest.raises(ValueError, match="shape"):
    rearrange(np.zeros((11, 6)), "(heads head_dim) embed", "embed heads head_dim", SIZES)
  with pytest.raises(ValueError, match="cannot rearrange"):
    rearrange(np.zeros((6,)), "embed", "vocab", SIZES)


def test_rope_interleave_pairs_halves():
  x = np.array([[0, 1, 2, 3, 10, 11, 12, 13]])
  y = RopeInterleave().forward(x, {})
  np.testing.assert_array_equal(y, [[0, 10, 1, 11, 2, 12, 3, 13]])
  np.testing.assert_array_equal(RopeInterleave().inverse(y, {}), x)


def test_rope_inverse_is_exact_on_heads():
  x = np.random.default_rng(1).standard_normal((6, 3, 8)).astype(ml_dtypes.bfloat16)
  op = RopeInterleave()
  assert np.array_equal(op.inverse(op.forward(x, {}), {}).view(np.uint16), x.view(np.uint16))


def test_scale_is_float32_and_rounds_once():
  x = np.random.default_rng(2).standard_normal((64,)).astype(ml_dtypes.bfloat16)
  sizes = {"s": 1 / math.sqrt(32)}
  y = Scale("s").forward(x, sizes)
  assert y.dtype == np.float32
  np.testing.assert_array_equal(y, x.astype(np.float32) * np.float32(1 / math.sqrt(32)))
  back = Scale("s").inverse(y.astype(ml_dtypes.bfloat16), sizes).astype(ml_dtypes.bfloat16)
  # Scaling by a power of two (1/sqrt(32) is not, so one bf16 rounding step at most).
  diff = np.abs(back.astype(np.float64) - x.astype(np.float64))
  assert np.all(diff <= np.abs(x.astype(np.float64)) * 2.0 ** -7)
  pow2 = {"s": 0.25}
  exact = Scale("s").inverse(Scale("s").forward(x, pow2), pow2).astype(ml_dtypes.bfloat16)
  assert np.array_equal(exact.view(np.uint16), x.view(np.uint16))


@pytest.mark.parametrize("src,dst", [("(heads head_dim) embed", "embed heads head_dim"),
                                     ("embed (heads head_dim)", "heads head_dim embed"),
                                     ("vocab embed", "embed vocab")])
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32])
def test_contiguous_copies_transposed_views_exactly(src, dst, dtype):
  sizes = {"embed": 600, "heads": 3, "head_dim": 100, "vocab": 513}
  x = np.random.default_rng(3).standard_normal(axes_shape(src, sizes)).astype(ml_dtypes.bfloat16)
  view = rearrange(x, src, dst, sizes)
  out = contiguous(view, dtype)
  assert out.flags.c_contiguous and out.dtype == dtype
  np.testing.assert_array_equal(out, np.ascontiguousarray(view).astype(dtype))
  np.testing.assert_array_equal(contiguous(view[5:300]), np.ascontiguousarray(view[5:300]))


def test_offset_adds_in_float32_and_inverts():
  x = np.random.default_rng(4).standard_normal((32,)).astype(ml_dtypes.bfloat16)
  y = Offset(1.0).forward(x, {})
  assert y.dtype == np.float32
  np.testing.assert_array_equal(y, x.astype(np.float32) + np.float32(1.0))
  wide = np.random.default_rng(5).standard_normal((32,)).astype(np.float32)
  assert Offset(1.0).forward(wide, {}).dtype == np.float64
  np.testing.assert_allclose(Offset(1.0).inverse(Offset(1.0).forward(wide, {}), {}), wide, rtol=0, atol=1e-15)


def test_resize_axis_pads_and_truncates_like_maxtext():
  from transforms.tensor_ops import ResizeAxis  # pylint: disable=import-outside-toplevel
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  pad = ResizeAxis(0)
  sizes = {"vocab": 6, "maxtext_vocab": 8}
  assert pad.shape((6, 2), sizes) == (8, 2)
  y = pad.forward(x, sizes)
  np.testing.assert_array_equal(y, np.concatenate([x, np.zeros((2, 2), np.float32)]))
  np.testing.assert_array_equal(pad.inverse(y, sizes), x)
  cut = {"vocab": 6, "maxtext_vocab": 4}
  np.testing.assert_array_equal(pad.forward(x, cut), x[:4])
  np.testing.assert_array_equal(pad.inverse(pad.forward(x, cut), cut), np.concatenate([x[:4], np.zeros((2, 2))]))


def test_group_by_head_interleaves_segments_per_head_and_inverts():
  sizes = {"heads": 2, "a": 1, "b": 3}
  x = np.arange(2 * 8).reshape(2, 8)  # rows: [a0 a1 | b0 b0 b0 b1 b1 b1] for heads 0, 1
  op = GroupByHead("heads", ("a", "b"))
  y = op.forward(x, sizes)
  np.testing.assert_array_equal(y[0], [0, 2, 3, 4, 1, 5, 6, 7])  # head 0: a0 b0, then head 1: a1 b1
  np.testing.assert_array_equal(op.inverse(y, sizes), x)
  bf16 = np.random.default_rng(0).standard_normal((3, 16)).astype(ml_dtypes.bfloat16)
  assert op.inverse(op.forward(bf16, {**sizes, "b": 7}), {**sizes, "b": 7}).tobytes() == bf16.tobytes()


def test_joined_pieces_round_trip_through_both_directions():
  """Two HF tensors joined into one MaxText array (Param.piece), then each cut out again."""
  sizes = {"heads": 2, "a": 2, "b": 3, "embed": 5, "wa": 4, "wb": 6, "all": 10}
  ops = (GroupByHead("heads", ("a", "b")),)
  first = Param("x.a", "k", "wa embed", "embed all", ops, piece=(0, ("wa", "wb")))
  second = Param("x.b", "k", "wb embed", "embed all", ops, piece=(1, ("wa", "wb")))
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((4, 5)), rng.standard_normal((6, 5))
  joined = hf_to_maxtext([b, a], (second, first), sizes)
  assert joined.shape == (5, 10)
  np.testing.assert_array_equal(joined[:, :5], np.concatenate([a[:2], b[:3]]).T)  # head 0: its a rows, its b rows
  np.testing.assert_array_equal(maxtext_to_hf([joined], [first], sizes), a)
  np.testing.assert_array_equal(maxtext_to_hf([joined], [second], sizes), b)
