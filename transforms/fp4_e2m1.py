"""DeepSeek V4's release format, read as the float32 weights the family spec names.

V4-Flash ships its routed experts as FP4 (e2m1, two per byte, element 2i in the low nibble; dtype
I8 [out, in / 2]) with one F8_E8M0 scale per 32 values (`<name>.scale` [out, in / 32]), and its
attention and shared-expert weights as F8_E4M3 with one F8_E8M0 scale per 128 x 128 block
(`<name>.scale` [ceil(out / 128), ceil(in / 128)]); config.json says quant_method fp8, scale_fmt
ue8m0, expert_dtype fp4. Scales are powers of two, so every dequantized value is exact in float32
(and in bf16: the family's cast loses nothing), identical to MaxText's deepseek_dequantize.py.
Rows are independent (FP8: per block row), so a row range reads only its own data and scales.
"""
from __future__ import annotations

import dataclasses
import numpy as np

from transforms.errors import ConversionError
from transforms.safetensors_io import ScaledTensorRef, TensorRef, read_tensor

SCALE_FMT = "ue8m0"
E8M0, FP4_DTYPE = "F8_E8M0", "I8"
E8M0_NAN = 255
GROUP = 32  # values per E8M0 scale
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
# One byte -> its (low nibble, high nibble) values: the low nibble is the earlier element.
E2M1_PAIRS = np.stack([E2M1_VALUES[np.arange(256) & 0xF], E2M1_VALUES[np.arange(256) >> 4]], axis=-1)
# E8M0 byte s -> 2**(s - 127) (2**-127 is a float32 subnormal, still exact); 255 is NaN.
E8M0_TABLE = np.append(np.ldexp(np.float32(1.0), np.arange(-127, 128)).astype(np.float32), np.float32(np.nan))
_ROWS_PER_STEP = 4096  # rows looked up at a time: the lookup's index copy stays small


def dequantize_fp4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """float32 [rows, in] from e2m1 pairs [rows, in / 2] and E8M0 scales [rows, in / 32]."""
  codes = np.ascontiguousarray(packed).view(np.uint8)
  exponents = np.ascontiguousarray(scales).view(np.uint8)
  if exponents.size and int(exponents.max()) == E8M0_NAN:
    raise ConversionError("an FP4 scale is the E8M0 NaN (255); the checkpoint is damaged, re-download it")
  rows, half = codes.shape
  out = np.empty((rows, 2 * half), np.float32)
  for i in range(0, rows, _ROWS_PER_STEP):
    chunk = out[i:i + _ROWS_PER_STEP]
    chunk[:] = E2M1_PAIRS[codes[i:i + _ROWS_PER_STEP]].reshape(len(chunk), -1)
    chunk *= np.repeat(E8M0_TABLE[exponents[i:i + _ROWS_PER_STEP]], GROUP, axis=-1)[:, :2 * half]
  return out


@dataclasses.dataclass(frozen=True)
class Fp4Ref(ScaledTensorRef):
  """An FP4 weight [out, in] with its E8M0 scales, presented as float32."""
  name: str
  weight: TensorRef
  scales: TensorRef

  @property
  def stored(self) -> tuple[TensorRef, TensorRef]:
    return self.weight, self.scales

  @property
  def shape(self) -> tuple[int, ...]:
    return (self.weight.shape[0], self.weight.shape[1] * 2)

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    try:
      return dequantize_fp4(read_tensor(self.weight, rows), read_tensor(self.scales, rows))
    except ConversionError as e:
      raise ConversionError(f"{self.scales.file}: tensor {self.scales.name}: {e}") from None
