"""LoRA adapters: PEFT's adapter directory, the merge W + (alpha / r) B A, and the sources that merge.

A PEFT adapter directory holds adapter_config.json (r, lora_alpha, target_modules, ...) and
adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight`
[out, r] per adapted linear weight. Merging is one pure function used by both directions, always in
float32 (or wider) and in HF's layout, before the family's value ops: `MergedRef` presents an HF
weight merged with its factors as a source tensor to HF -> MaxText (row block by row block, the
factors whole: they are small), `LoraFactors` tells MaxText -> HF where a kernel's factors are in
an adapter checkpoint so a shard writer merges each row block before casting it once.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Mapping

import numpy as np

from transforms import storage
from transforms.convert import maxtext_to_hf
from transforms.errors import ConversionError
from transforms.orbax_reader import CheckpointReader
from transforms.safetensors_io import TensorRef, read_tensor
from transforms.tensor_ops import contiguous

# The factors' shared axis in a derived family's named axes, and the config key holding the rank.
RANK = "lora_rank"
# Config key of a derived family: the HF names (templates) of the base parameters an adapter adapts.
TARGETS = "lora_targets"
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FACTOR = {"A": ".lora_A.weight", "B": ".lora_B.weight"}
# adapter_config.json settings an HF -> MaxText conversion cannot honour, and why. Each is an error
# when set (truthy), never dropped: dropping them would silently change what the adapter computes.
UNSUPPORTED = {
    "use_dora": "DoRA's magnitude vectors have no MaxText counterpart",
    "modules_to_save": "fully trained copies of modules are not LoRA factors",
    "rank_pattern": "per-module ranks are not supported (MaxText has one lora_rank)",
    "alpha_pattern": "per-module alphas are not supported (MaxText has one lora_alpha)",
    "target_parameters": "LoRA on parameters (MoE experts) is not supported",
    "trainable_token_indices": "trained token embeddings are not LoRA factors",
    "layer_replication": "replicated layers change the model's depth",
    "lora_bias": "LoRA biases have no MaxText counterpart",
    "fan_in_fan_out": "Conv1D-style (fan_in_fan_out) weights are not used by the supported families",
    "use_qalora": "QALoRA's pooled inputs are not plain LoRA",
    "alora_invocation_tokens": "activated LoRA is not plain LoRA",
}


def peft_name(hf: str, factor: str) -> str:
  """model.layers.0.self_attn.q_proj.weight, "A" -> base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight."""
  return PEFT_PREFIX + hf.removesuffix(".weight") + FACTOR[factor]


def base_name(name: str) -> tuple[str, str] | None:
  """(HF weight name, "A" or "B") of a PEFT factor tensor name; None for anything else."""
  for factor, suffix in FACTOR.items():
    if name.startswith(PEFT_PREFIX) and name.endswith(suffix):
      return name[len(PEFT_PREFIX):-len(suffix)] + ".weight", factor
  return None


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """What adapter_config.json says of the factors: rank, alpha, and how they scale."""
  path: str
  r: int
  alpha: float
  use_rslora: bool
  raw: str  # the whole file, kept so that MaxText -> HF can write back what came in

  @property
  def scaling(self) -> float:
    """PEFT's scale of B A: alpha / r, or alpha / sqrt(r) with use_rslora."""
    return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

  @property
  def config(self) -> dict[str, Any]:
    return json.loads(self.raw)


def read_adapter_config(adapter_dir: str) -> AdapterConfig:
  """adapter_config.json of a PEFT directory, checked to describe plain LoRA that ckptflow can convert."""
  path = storage.join(adapter_dir, ADAPTER_CONFIG)
  if not storage.exists(path):
    raise ConversionError(f"{path}: no such file; hf_lora_adapter_path must be a PEFT adapter directory "
                          f"({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
  raw = storage.read_text(path)
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise ConversionError(f"{path}: expected a JSON object")
  if config.get("peft_type", "LORA") != "LORA":
    raise ConversionError(f"{path}: peft_type {config.get('peft_type')!r}; only LoRA adapters convert")
  r, alpha = config.get("r"), config.get("lora_alpha")
  if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
    raise ConversionError(f"{path}: r={r!r}; a LoRA adapter needs a positive integer rank r")
  if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
    raise ConversionError(f"{path}: lora_alpha={alpha!r}; a LoRA adapter needs a positive lora_alpha")
  for key, why in UNSUPPORTED.items():
    if config.get(key):
      raise ConversionError(f"{path}: {key}={json.dumps(config[key])} cannot be converted: {why}")
  if config.get("bias", "none") != "none":
    raise ConversionError(f"{path}: bias={config['bias']!r} cannot be converted: MaxText's LoRA has no biases "
                          "(train with bias='none')")
  return AdapterConfig(path, r, float(alpha), bool(config.get("use_rslora")), raw)


def merge(w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
  """W + scale * (B @ A) in float32, or in W's dtype when it is wider (float64).

  `w` is [out, in] (or rows of it), `b` the same rows [out, r] and `a` [r, in]; one rounding to
  the output dtype is left to the writer. The product is summed rank by rank in a fixed order
  rather than by BLAS, whose kernels (picked by the number of rows) round differently: so a row
  merges to the same bits whether it comes alone, in a row block or in the whole weight, and
  whichever machine runs it. It is made MERGE_BYTES of rows at a time, in a cache-sized buffer.
  """
  dtype = np.promote_types(w.dtype, np.float32)
  # A new C-ordered copy: rows of it are contiguous, and a transposed view (MaxText -> HF) is copied tiled.
  out = np.array(w, dtype, order="C") if w.flags.c_contiguous else contiguous(w, dtype)
  a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
  rows, cols = out.shape
  step = max(1, MERGE_BYTES // max(1, cols * dtype.itemsize))
  delta_rows, term_rows = np.empty((2, min(step, rows), cols), dtype)
  for start in range(0, rows, step):
    block = out[start:start + step]
    delta, term = delta_rows[:len(block)], term_rows[:len(block)]
    low_rank_product(b[start:start + step], a, delta, term)
    delta *= dtype.type(scale)
    block += delta
  return out


def low_rank_product(b: np.ndarray, a: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
  """out = B @ A as sum over k of B[:, k] (outer) A[k], added in order k = 0, 1, ... (IEEE per element).

  The rank is at least 1 (read_adapter_config refuses others)."""
  np.multiply(b[:, :1], a[0], out=out)
  for k in range(1, a.shape[0]):
    np.multiply(b[:, k:k + 1], a[k], out=scratch)
    out += scratch


# Rows of a LoRA product made at once: about what a core's L2 cache holds, twice (product and term).
MERGE_BYTES = 2**20


@dataclasses.dataclass(frozen=True)
class MergedRef:
  """An HF weight merged with its LoRA factors, read like a source tensor (float32), in row blocks.

  Rows of the weight need the same rows of B and all of A. `config_file` (adapter_config.json, whose
  alpha and r make `scale`) is listed with the files read so a manifest fingerprints it too.
  """
  base: Any  # TensorRef or QuantizedRef
  a: TensorRef
  b: TensorRef
  scale: float
  config_file: str

  @property
  def name(self) -> str:
    return self.base.name

  @property
  def dtype(self) -> str:
    return "F32"

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.base.shape)

  @property
  def file(self) -> str:
    return self.base.file

  @property
  def files(self) -> tuple[str, ...]:
    return tuple(sorted({*getattr(self.base, "files", (self.base.file,)), self.a.file, self.b.file, self.config_file}))

  @property
  def nbytes(self) -> int:
    return self.base.nbytes + self.a.nbytes + self.b.nbytes

  @property
  def dequantized_nbytes(self) -> int:
    return math.prod(self.shape) * 4

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    return self.base.rows_nbytes(rows) + self.b.rows_nbytes(rows) + self.a.nbytes

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    return merge(read_tensor(self.base, rows), read_tensor(self.a), read_tensor(self.b, rows), self.scale)


@dataclasses.dataclass(frozen=True)
class ZeroRef:
  """A factor the adapter does not have (a layer outside PEFT's layers_to_transform): zeros, read from nowhere."""
  name: str
  shape: tuple[int, ...]
  dtype: str
  file: str

  @property
  def files(self) -> tuple[str, ...]:
    return ()

  @property
  def nbytes(self) -> int:
    return 0

  def rows_nbytes(self, rows: tuple[int, int] | None) -> int:
    return 0

  def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
    shape = self.shape if rows is None else (rows[1] - rows[0], *self.shape[1:])
    return np.zeros(shape, np.float32)


@dataclasses.dataclass(frozen=True)
class LoraFactors:
  """Where one kernel's factors are in a MaxText adapter checkpoint, and how they turn into HF's A, B.

  `a_param`/`b_param` are the derived factor parameters (models.lora), `sizes` the named sizes they
  need (with the rank), `scale` alpha / r.
  """
  items: str
  a_array: str
  a_index: tuple[tuple[int, int], ...]
  b_array: str
  b_index: tuple[tuple[int, int], ...]
  a_param: Any
  b_param: Any
  sizes: tuple[tuple[str, Any], ...]
  scale: float


@functools.lru_cache(maxsize=None)
def _reader(items: str) -> CheckpointReader:
  """One reader (and its open arrays) per adapter checkpoint per process."""
  return CheckpointReader(items)


@functools.lru_cache(maxsize=2)
def hf_factors(factors: LoraFactors) -> tuple[np.ndarray, np.ndarray]:
  """HF's A [r, in] and B [out, r] of a kernel, from the adapter checkpoint (kept for the next row block)."""
  reader, sizes = _reader(factors.items), dict(factors.sizes)
  a = np.asarray(reader.read_slice(factors.a_array, factors.a_index).result())
  b = np.asarray(reader.read_slice(factors.b_array, factors.b_index).result())
  return maxtext_to_hf([a], [factors.a_param], sizes), maxtext_to_hf([b], [factors.b_param], sizes)


def merged_rows(rows: np.ndarray, factors: LoraFactors, hf_rows: tuple[int, int] | None) -> np.ndarray:
  """HF rows `hf_rows` (None: all) of a weight, converted back from MaxText, merged with its factors."""
  a, b = hf_factors(factors)
  return merge(rows, a, b if hf_rows is None else b[hf_rows[0]:hf_rows[1]], factors.scale)


def as_sizes(sizes: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted(sizes.items()))
