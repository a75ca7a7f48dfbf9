"""DeepSeek V4's KV compressors: each attention layer but the first few (sliding-window only) pools
every `ratio` tokens' keys/values into one, with learned gates and a position bias per slot.

A compressed-sparse (CSA) layer pools overlapping windows (kv_proj and gate_proj twice head_dim
wide) and has a lightning indexer (its own small compressor, queries and head weights) that picks
the pooled entries each query reads; a heavily-compressed (HCA) layer pools disjoint windows of
many more tokens and reads them all. MaxText names the two `csa_compressor` and `hca_compressor`.
Kernels transpose, the rest copy; position biases are float32 in HF.
"""
from __future__ import annotations

from typing import Any

from models.spec import Param

CSA, HCA = "csa", "hca"


def compressor(kind: str, hf: str, mt: str, **kw: Any) -> list[Param]:
  """One compressor: HF tensors `hf`kv_proj.weight, ... <-> MaxText arrays `mt`/kv_proj/kernel, ..."""
  width, ratio = ("csa_kv", "csa_ratio") if kind == CSA else ("head_dim", "hca_ratio")
  return [Param(hf + "kv_proj.weight", f"{mt}/kv_proj/kernel", f"{width} embed", f"embed {width}", **kw),
          Param(hf + "gate_proj.weight", f"{mt}/gate_proj/kernel", f"{width} embed", f"embed {width}", **kw),
          Param(hf + "position_bias", f"{mt}/position_bias", f"{ratio} {width}", f"{ratio} {width}", hf_dtype="F32",
                **kw),
          Param(hf + "kv_norm.weight", f"{mt}/kv_norm/scale", "head_dim", "head_dim", **kw)]


def indexer(hf: str, mt: str, **kw: Any) -> list[Param]:
  """The CSA indexer: its compressor (index_head_dim wide, overlapping), query and head weights."""
  width = "idx_kv"
  return [Param(hf + "kv_proj.weight", f"{mt}/kv_proj/kernel", f"{width} embed", f"embed {width}", **kw),
          Param(hf + "gate_proj.weight", f"{mt}/gate_proj/kernel", f"{width} embed", f"embed {width}", **kw),
          Param(hf + "position_bias", f"{mt}/position_bias", f"csa_ratio {width}", f"csa_ratio {width}",
                hf_dtype="F32", **kw),
          Param(hf + "kv_norm.weight", f"{mt}/kv_norm/scale", "index_head_dim", "index_head_dim", **kw),
          Param(hf + "q_b_proj.weight", f"{mt}/q_proj/kernel", "(index_heads index_head_dim) q_lora",
                "q_lora (index_heads index_head_dim)", **kw),
          Param(hf + "scorer.weights_proj.weight", f"{mt}/weights_proj/kernel", "index_heads embed", "embed index_heads", **kw)]
