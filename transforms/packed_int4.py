"""compressed-tensors' pack-quantized int4 (Kimi K2's routed experts), read as the float32 weight
the family spec names.

A weight W [out, in] is stored as `<name>.weight_packed` I32 [out, in / 8] (element 8c + k of a
row in bits 4k..4k+3 of int c, as q + 8), `<name>.weight_scale` BF16 [out, in / group_size] (one
symmetric scale per group) and `<name>.weight_shape` I64 [2]. W = q * s is exact in float32 (a
4-bit integer times an 8-bit mantissa), so the family's cast to the save dtype rounds once:
bf16(q * s), as MaxText's dequantize_pack_quantized_int4 computes it. Rows are independent, so a
row range needs only its own packed rows and scales: one ranged read of each.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from transforms.errors import ConversionError
from transforms.safetensors_io import ScaledTensorRef, TensorRef, read_tensor

METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
PACKED, SCALE, SHAPE = "weight_packed", "weight_scale", "weight_shape"
PER_INT = 8  # 4-bit values per int32


def unpack_int4(packed: np.ndarray) -> np.ndarray:
  """int8 q [rows, 8 * cols] from I32 [rows, cols]: nibble k of each int (low first), minus 8."""
  words = np.ascontiguousarray(packed).view(np.uint32)
  shifts = np.arange(0, 32, 4, dtype=np.uint32)
  nibbles = (words[..., None] >> shifts) & np.uint32(0xF)
  return (nibbles.astype(np.int8) - np.int8(8)).reshape(*packed.shape[:-1], packed.shape[-1] * PER_INT)


def dequantize_int4(packed: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
  """float32 W [rows, in] = q * s, s repeated over each `group` of a row."""
  q = unpack_int4(packed).astype(np.float32)
  q *= np.repeat(np.asarray(scale).astype(np.float32), group, axis=-1)[..., :q.shape[-1]]
  return q


@dataclasses.dataclass(frozen=True)
class PackedInt4Ref(ScaledTensorRef):
  """A pack-quantized weight presented as its float32 value [out, in]."""
  name: str
  packed: TensorRef
  scale: TensorRef
  group: int

  @property
  def stored(self) -> tuple[TensorRef, TensorRef]:
    return self.packed, self.scale

  @property
  def shape(self) -> tuple[int, ...]:
    return (self.packed.shape[0], self.packed.shape[1] * PER_INT)

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    return dequantize_int4(read_tensor(self.packed, rows), read_tensor(self.scale, rows), self.group)


def group_size(qc: Mapping[str, Any]) -> int:
  """The one int4 group size of a pack-quantized config (what ckptflow reads: 4-bit symmetric groups)."""
  groups = list((qc.get("config_groups") or {}).values())
  weights = [g.get("weights") or {} for g in groups]
  if qc.get("format") != FORMAT or not weights or any(
      w.get("num_bits") != 4 or w.get("type") != "int" or not w.get("symmetric") or w.get("strategy") != "group"
      for w in weights) or len({w.get("group_size") for w in weights}) != 1:
    raise ConversionError(f"config.json: quantization_config is {METHOD} {qc.get('format')!r} with weights "
                          f"{weights}; ckptflow reads {FORMAT} 4-bit symmetric int groups only")
  return int(weights[0]["group_size"])


def pair_int4(tensors: dict[str, TensorRef], qc: Mapping[str, Any]) -> dict[str, Any]:
  """Each `<name>.weight_packed` with its scale as `<name>.weight`; weight_shape is implied; others as is."""
  group = group_size(qc)
  out: dict[str, Any] = {}
  for name, ref in tensors.items():
    base, _, leaf = name.rpartition(".")
    if leaf in (SCALE, SHAPE):
      if f"{base}.{PACKED}" not in tensors:
        raise ConversionError(f"{ref.file}: tensor {name} has no {base}.{PACKED} beside it; the checkpoint is "
                              "incomplete (re-download it)")
      continue
    if leaf != PACKED:
      out[name] = ref
      continue
    scale = tensors.get(f"{base}.{SCALE}")
    if scale is None:
      raise ConversionError(f"{ref.file}: int4 tensor {name} has no {base}.{SCALE}; the checkpoint is incomplete "
                            "(re-download it)")
    if ref.dtype != "I32" or len(ref.shape) != 2:
      raise ConversionError(f"{ref.file}: tensor {name} is {ref.dtype} {list(ref.shape)}; packed int4 weights are "
                            f"I32 [out, in/{PER_INT}]")
    values = ref.shape[1] * PER_INT
    want = [ref.shape[0], values // group]
    if values % group or list(scale.shape) != want or scale.dtype not in ("BF16", "F16", "F32"):
      raise ConversionError(f"{ref.file}: tensor {name} {list(ref.shape)} ({values} values a row) and its "
                            f"{SCALE} {scale.dtype} {list(scale.shape)} do not make whole groups of {group} (it "
                            f"needs [{ref.shape[0]}, {values / group:g}]); the packed tensor or its scales are "
                            "truncated, re-download the shard")
    out[f"{base}.weight"] = PackedInt4Ref(f"{base}.weight", ref, scale, group)
  return out
