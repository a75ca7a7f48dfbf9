"""Quantized sources read as the float32 tensors the family specs name: FP8 blocks and MXFP4, and
(dispatched from here, by config.json's quantization_config) DeepSeek V4's E8M0-scaled FP8 / FP4
(transforms/fp4_e2m1.py) and compressed-tensors int4 (transforms/packed_int4.py).

Released DeepSeek-V3/V3.2 checkpoints keep their linear weights as float8_e4m3fn with one float32
`weight_scale_inv` per 128x128 block; released GPT-OSS keeps its expert weights as MXFP4 (`_blocks`:
two E2M1 values per byte, `_scales`: one E8M0 exponent per 32 values). Dequantizing inside the
element transform means the pipeline reads the released files directly, on CPU, one tensor (or row
range) at a time, instead of a separate pass that writes a second full-size copy first.

Dequantized values are float32 and exact products of the stored numbers (FP8: value x scale rounded
once to float32, as DeepSeek's own weight_dequant computes it; MXFP4: exact, powers of two), so the
only rounding left is the family's, to --save_dtype. `quantize_fp8_blocks` is DeepSeek's recipe back
(scale = block amax / 448), for writing a fine-tuned model in the released format.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from transforms import fp4_e2m1, packed_int4
from transforms.fp4_e2m1 import E2M1_PAIRS as _E2M1_PAIRS, E8M0_TABLE as _E8M0_TABLE, Fp4Ref
from transforms.errors import ConversionError
from transforms.safetensors_io import ScaledTensorRef, TensorRef, read_tensor

FP8 = "fp8"
MXFP4 = "mxfp4"
FP8_BLOCK = (128, 128)
FP8_SUFFIX = "_scale_inv"
MXFP4_BLOCKS, MXFP4_SCALES = "_blocks", "_scales"
MXFP4_GROUP = 32  # values per E8M0 scale (16 bytes of packed E2M1 pairs)
E4M3_MAX = 448.0
# What DeepSeek-V3's config.json says of its weights; kept (or added) in configs we write in FP8.
DEEPSEEK_FP8_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": FP8,
                       "weight_block_size": list(FP8_BLOCK)}
# The linear weights DeepSeek-V3/V3.2 release in FP8: MLA's projections (and V3.2's indexer wq_b and
# wk), the dense, routed and shared experts' MLPs. Embeddings, norms, the router and lm_head stay bf16.
DEEPSEEK_FP8_WEIGHTS = re.compile(
    r"model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|"
    r"indexer\.wq_b|indexer\.wk)|mlp\.((experts\.\d+|shared_experts)\.)?(gate|up|down)_proj)\.weight")

# Every float8_e4m3fn bit pattern decoded once; a byte lookup is much faster than a cast per element.
_E4M3_TABLE = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
_LOOKUP_CHUNK = 1 << 20  # bytes looked up per step
# Above this exponent byte, 6 * 2**(s - 127) no longer fits in float32.
_E8M0_ALWAYS_FINITE = 252


def dequantize_fp8_blocks(q: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int] = FP8_BLOCK,
                          row0: int = 0) -> np.ndarray:
  """float32 w[r, c] = float32(q[r, c]) * scale_inv[(row0 + r) // block[0] - row0 // block[0], c // block[1]].

  `q` holds rows [row0, row0 + len(q)) of the weight and `scale_inv` the scale rows that cover them,
  so a row range that starts or stops inside a block needs no more than its own blocks' scales.
  """
  codes = np.asarray(q).view(np.uint8)
  rows, cols = codes.shape
  out = np.empty((rows, cols), np.float32)
  first = row0 // block[0]
  last = (row0 + rows - 1) // block[0] if rows else first - 1
  for i in range(first, last + 1):  # a block's rows at a time: the lookup's index copy stays small
    start, stop = max(i * block[0], row0) - row0, min((i + 1) * block[0], row0 + rows) - row0
    out[start:stop] = _E4M3_TABLE[codes[start:stop]]
    out[start:stop] *= np.repeat(scale_inv[i - first].astype(np.float32), block[1])[:cols]
  return out


def quantize_fp8_blocks(w: np.ndarray, block: tuple[int, int] = FP8_BLOCK) -> tuple[np.ndarray, np.ndarray]:
  """DeepSeek's recipe: per block, scale_inv = amax / 448 and q = e4m3(w / scale_inv), in float32.

  Lossless for weights that came from FP8: a float32 product q * s cannot always be divided back
  to s (float32(448 * s) / 448 != s for about one scale in ten), so a block whose dequantized
  values come within 2**-20 of `w` but not exactly is retried with the scales a few ulps either
  side, and the one that gives back `w` bit for bit is kept. All-zero blocks get scale_inv 1 (the
  recipe's 0/0 would be NaN); quotients are clipped to +-448 so none can become NaN.
  """
  w = np.asarray(w, np.float32)
  rows, cols = w.shape
  col_starts = np.arange(0, cols, block[1])
  q = np.empty((rows, cols), ml_dtypes.float8_e4m3fn)
  scales = np.empty((math.ceil(rows / block[0]), len(col_starts)), np.float32)
  for i in range(scales.shape[0]):
    seg = w[i * block[0]:(i + 1) * block[0]]
    amax = np.maximum.reduceat(np.abs(seg).max(axis=0), col_starts) if cols else np.zeros(0, np.float32)
    scale = amax / np.float32(E4M3_MAX)
    scale[amax == 0] = 1.0
    seg_q, exact, close = _fp8_try(seg, scale, block[1], col_starts)
    for j in np.flatnonzero(close & ~exact):
      cols_j = slice(j * block[1], (j + 1) * block[1])
      for candidate in _neighbours(scale[j]):
        cand_q, cand_exact, _ = _fp8_try(seg[:, cols_j], np.array([candidate], np.float32), block[1], col_starts[:1])
        if cand_exact[0]:
          scale[j], seg_q[:, cols_j] = candidate, cand_q
          break
    scales[i] = scale
    q[i * block[0]:(i + 1) * block[0]] = seg_q
  return q, scales


def _fp8_try(seg: np.ndarray, scale: np.ndarray, width: int, col_starts: np.ndarray):
  """q for one row of blocks with these scales, and per block: gives back `seg` exactly / within 2**-20."""
  full = np.repeat(scale, width)[:seg.shape[1]]
  seg_q = np.clip(seg / full, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
  back = _E4M3_TABLE[seg_q.view(np.uint8)] * full
  exact = np.logical_and.reduceat((back == seg).all(axis=0), col_starts)
  close = np.logical_and.reduceat((np.abs(back - seg) <= np.abs(seg) * np.float32(2.0**-20)).all(axis=0), col_starts)
  return seg_q, exact, close


def _neighbours(scale: np.float32, ulps: int = 3) -> list[np.float32]:
  """The float32 values 1..ulps steps above and below `scale`, nearest first."""
  up, down, out = scale, scale, []
  for _ in range(ulps):
    up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
    out += [up, down]
  return out


def fp8_scale_name(weight_name: str) -> str:
  return weight_name + FP8_SUFFIX


def fp8_scale_shape(shape: tuple[int, ...], block: tuple[int, int] = FP8_BLOCK) -> tuple[int, int]:
  return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """float32 [..., n, G * 32] from packed [..., n, G, 16] bytes and [..., n, G] E8M0 exponents.

  Element 2k of a group is byte k's low nibble, 2k + 1 its high nibble; each value is
  e2m1(nibble) * 2**(scale - 127), exact in float32 as long as it does not overflow.
  """
  blocks, scales = np.asarray(blocks), np.asarray(scales)
  flat_blocks = blocks.reshape(-1, blocks.shape[-1])
  flat_scales = scales.reshape(-1)
  out = np.empty((flat_blocks.shape[0], 2 * blocks.shape[-1]), np.float32)
  step = max(1, _LOOKUP_CHUNK // max(1, blocks.shape[-1]))
  with np.errstate(over="ignore", invalid="ignore"):  # callers check scales that can overflow
    for i in range(0, len(out), step):  # in chunks: the lookup's index copy stays small
      chunk = out[i:i + step]
      chunk[:] = _E2M1_PAIRS[flat_blocks[i:i + step]].reshape(len(chunk), -1)
      chunk *= _E8M0_TABLE[flat_scales[i:i + step]][:, None]
  return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * 2 * blocks.shape[-1])


@dataclasses.dataclass(frozen=True)
class QuantizedRef(ScaledTensorRef):
  """A tensor stored quantized, presented as the float32 tensor the family spec names.

  `weight` is the FP8 data or the packed MXFP4 `_blocks`, `scales` its `weight_scale_inv` or
  `_scales`. `nbytes` is what is read (data + scales); `dequantized_nbytes` what it becomes.
  MXFP4 data is packed [..., out, in / 32, 16]; the logical tensor is [..., in, out], as
  transformers dequantizes GPT-OSS's experts.
  """
  name: str
  format: str
  weight: TensorRef
  scales: TensorRef
  block: tuple[int, int] = FP8_BLOCK

  @property
  def stored(self) -> tuple[TensorRef, TensorRef]:
    return self.weight, self.scales

  @property
  def shape(self) -> tuple[int, ...]:
    if self.format == FP8:
      return self.weight.shape
    *lead, out, groups, pairs = self.weight.shape
    return (*lead, groups * 2 * pairs, out)

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    """Bytes `read(rows)` fetches: those rows of the data and the scale rows they need."""
    if rows is None:
      return self.nbytes
    start, stop = rows
    if self.format == FP8:
      first = start // self.block[0]
      last = -(-stop // self.block[0]) if stop > start else first
      return self.weight.rows_nbytes(rows) + self.scales.rows_nbytes((first, last))
    if len(self.shape) > 2:
      return self.weight.rows_nbytes(rows) + self.scales.rows_nbytes(rows)
    return self.nbytes

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The float32 tensor, or rows [start, stop) of its first axis, from ranged reads of only the
    data and scale rows those rows need."""
    start, stop = rows if rows is not None else (0, self.shape[0])
    if self.format == FP8:
      first = start // self.block[0]
      last = -(-stop // self.block[0]) if stop > start else first
      return dequantize_fp8_blocks(_read_rows(self.weight, start, stop), _read_rows(self.scales, first, last),
                                   self.block, start)
    if len(self.shape) > 2:  # leading axes (experts) are shared by data, scales and the result
      blocks, scales = _read_rows(self.weight, start, stop), _read_rows(self.scales, start, stop)
    else:
      blocks, scales = read_tensor(self.weight), read_tensor(self.scales)
    value = np.swapaxes(dequantize_mxfp4(blocks, scales), -1, -2)
    if scales.size and int(scales.max()) > _E8M0_ALWAYS_FINITE:
      _check_finite(self, scales, value)
    return value if len(self.shape) > 2 or rows is None else value[start:stop]


def _check_finite(ref: QuantizedRef, scales: np.ndarray, value: np.ndarray) -> None:
  """Only scales near the top of E8M0's range can make a value NaN (255) or overflow float32."""
  if int(scales.max()) == 255:
    raise ConversionError(f"{ref.scales.file}: tensor {ref.scales.name} holds the E8M0 NaN scale (255); "
                          "the checkpoint is damaged, re-download it")
  if not np.all(np.isfinite(value)):
    raise ConversionError(f"{ref.weight.file}: tensor {ref.weight.name}: an MXFP4 value times its scale "
                          f"2**{int(scales.max()) - 127} overflows float32; the checkpoint is damaged")


def _read_rows(ref: TensorRef, start: int, stop: int) -> np.ndarray:
  """Rows [start, stop) of a tensor's first axis, from one ranged read of just those bytes."""
  return read_tensor(ref, (start, stop))


def quantization(config: Mapping[str, Any]) -> dict[str, Any] | None:
  """config.json's quantization_config, checked to be one ckptflow reads; None when not quantized."""
  qc = config.get("quantization_config")
  if not qc:
    return None
  method = qc.get("quant_method") if isinstance(qc, dict) else None
  if method not in (FP8, MXFP4, packed_int4.METHOD):
    raise ConversionError(f"config.json: quantization_config quant_method {method!r} is not supported; "
                          f"ckptflow dequantizes {FP8!r} (DeepSeek-V3 blocks), {MXFP4!r} (GPT-OSS) and "
                          f"{packed_int4.METHOD!r} int4 (Kimi K2)")
  if method == FP8 and qc.get("fmt", "e4m3") != "e4m3":
    raise ConversionError(f"config.json: FP8 format {qc.get('fmt')!r} is not supported; only e4m3")
  return qc


def logical_tensors(tensors: dict[str, TensorRef], config: Mapping[str, Any]) -> dict[str, TensorRef | QuantizedRef]:
  """The checkpoint's tensors as the family spec names them: each quantized weight paired with its
  scales into one QuantizedRef (config.json's quantization_config says which format); others as is."""
  qc = quantization(config)
  if qc is None:
    return tensors
  if qc["quant_method"] == packed_int4.METHOD:
    return packed_int4.pair_int4(tensors, qc)
  if is_ue8m0(qc):
    return pair_ue8m0(tensors, qc)
  pair = _pair_fp8 if qc["quant_method"] == FP8 else _pair_mxfp4
  return pair(tensors, qc)


def _pair_fp8(tensors: dict[str, TensorRef], qc: dict[str, Any]) -> dict[str, TensorRef | QuantizedRef]:
  block = tuple(qc.get("weight_block_size") or FP8_BLOCK)
  if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
    raise ConversionError(f"config.json: quantization_config weight_block_size {list(block)} is not two "
                          "positive integers")
  out: dict[str, TensorRef | QuantizedRef] = {}
  for name, ref in tensors.items():
    if name.endswith(FP8_SUFFIX):
      weight = tensors.get(name.removesuffix(FP8_SUFFIX))
      if weight is None or weight.dtype != "F8_E4M3":
        raise ConversionError(f"{ref.file}: tensor {name} has no F8_E4M3 weight "
                              f"{name.removesuffix(FP8_SUFFIX)} beside it; the checkpoint is incomplete")
      continue
    if ref.dtype not in ("F8_E4M3", "F8_E5M2"):
      out[name] = ref
      continue
    scales = tensors.get(fp8_scale_name(name))
    if ref.dtype != "F8_E4M3" or len(ref.shape) != 2:
      raise ConversionError(f"{ref.file}: tensor {name} is {ref.dtype} {list(ref.shape)}; only 2-D F8_E4M3 "
                            "weights with block scales are supported")
    if scales is None:
      raise ConversionError(f"{ref.file}: FP8 tensor {name} has no {fp8_scale_name(name)}; the checkpoint "
                            "is incomplete (re-download it)")
    want = fp8_scale_shape(ref.shape, block)
    if scales.shape != want or scales.dtype != "F32":
      raise ConversionError(f"{scales.file}: tensor {scales.name} is {scales.dtype} {list(scales.shape)} but "
                            f"{name} {list(ref.shape)} in {list(block)} blocks needs F32 {list(want)}")
    out[name] = QuantizedRef(name, FP8, ref, scales, block)
  return out


def _pair_mxfp4(tensors: dict[str, TensorRef], qc: dict[str, Any]) -> dict[str, TensorRef | QuantizedRef]:
  out: dict[str, TensorRef | QuantizedRef] = {}
  for name, ref in tensors.items():
    if name.endswith(MXFP4_SCALES):
      if name.removesuffix(MXFP4_SCALES) + MXFP4_BLOCKS not in tensors:
        raise ConversionError(f"{ref.file}: tensor {name} has no {name.removesuffix(MXFP4_SCALES)}"
                              f"{MXFP4_BLOCKS} beside it; the checkpoint is incomplete")
      continue
    if not name.endswith(MXFP4_BLOCKS):
      out[name] = ref
      continue
    base = name.removesuffix(MXFP4_BLOCKS)
    scales = tensors.get(base + MXFP4_SCALES)
    if scales is None:
      raise ConversionError(f"{ref.file}: MXFP4 tensor {name} has no {base}{MXFP4_SCALES}; the checkpoint is "
                            "incomplete (re-download it)")
    if ref.dtype != "U8" or len(ref.shape) < 3 or ref.shape[-1] * 2 != MXFP4_GROUP:
      raise ConversionError(f"{ref.file}: tensor {name} is {ref.dtype} {list(ref.shape)}; MXFP4 blocks are U8 "
                            f"[..., out, in/{MXFP4_GROUP}, {MXFP4_GROUP // 2}]")
    if scales.dtype != "U8" or scales.shape != ref.shape[:-1]:
      raise ConversionError(f"{scales.file}: tensor {scales.name} is {scales.dtype} {list(scales.shape)} but "
                            f"{name} {list(ref.shape)} needs U8 {list(ref.shape[:-1])}")
    out[base] = QuantizedRef(base, MXFP4, ref, scales)
  return out


def is_quantized(ref: Any) -> bool:
  """A source read quantized and dequantized as it is read (any of the formats above)."""
  return isinstance(ref, ScaledTensorRef)


def is_ue8m0(qc: Mapping[str, Any]) -> bool:
  return qc.get("quant_method") == FP8 and qc.get("scale_fmt") == fp4_e2m1.SCALE_FMT


def pair_ue8m0(tensors: dict[str, TensorRef], qc: Mapping[str, Any]) -> dict[str, Any]:
  """Each quantized `<name>.weight` with its `<name>.scale`, as one float32 source; others as is."""
  block = tuple(qc.get("weight_block_size") or FP8_BLOCK)
  out: dict[str, Any] = {}
  for name, ref in tensors.items():
    base = name.removesuffix(".scale")
    if name != base:
      if base + ".weight" not in tensors:
        raise ConversionError(f"{ref.file}: tensor {name} has no {base}.weight beside it; the checkpoint is "
                              "incomplete (re-download it)")
      continue
    if ref.dtype not in ("F8_E4M3", fp4_e2m1.FP4_DTYPE):
      out[name] = ref
      continue
    scales = tensors.get(name.removesuffix(".weight") + ".scale")
    if scales is None or len(ref.shape) != 2:
      raise ConversionError(f"{ref.file}: {ref.dtype} tensor {name} {list(ref.shape)} has no 2-D weight with a "
                            f"{name.removesuffix('.weight')}.scale beside it; the checkpoint is incomplete")
    fp4 = ref.dtype == fp4_e2m1.FP4_DTYPE
    want = ([ref.shape[0], ref.shape[1] * 2 // fp4_e2m1.GROUP] if fp4 else
            [math.ceil(ref.shape[0] / block[0]), math.ceil(ref.shape[1] / block[1])])
    if list(scales.shape) != want or scales.dtype != fp4_e2m1.E8M0 or fp4 and ref.shape[1] * 2 % fp4_e2m1.GROUP:
      grid = f"one per {fp4_e2m1.GROUP} values" if fp4 else f"one per {list(block)} block"
      raise ConversionError(f"{scales.file}: tensor {scales.name} is {scales.dtype} {list(scales.shape)} but "
                            f"{'FP4' if fp4 else 'FP8'} {name} {list(ref.shape)} needs {fp4_e2m1.E8M0} {want} ({grid}); "
                            "the scale grid does not fit its weight, re-download the shard")
    out[name] = Fp4Ref(name, ref, scales) if fp4 else QuantizedRef(name, FP8, ref, scales, block)
  return out


def dequantized_nbytes(ref: TensorRef | QuantizedRef) -> int:
  """Bytes of the tensor the family transforms see (float32 for a quantized source)."""
  return getattr(ref, "dequantized_nbytes", ref.nbytes)
