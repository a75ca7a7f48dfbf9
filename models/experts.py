"""Routed experts that HF stores fused, one tensor per layer for all experts (transformers 5's
`experts.gate_up_proj` / `experts.down_proj`), as MaxText's MoE block holds them: experts on axis 0,
gate and up split into wi_0 and wi_1.

`gate_up_proj` is [experts, 2 * moe_mlp, embed] with the gate rows first, then the up rows (what
`.chunk(2, dim=-1)` of its output reads), so its middle axis is "(two moe_mlp)" and wi_0 / wi_1 are
parts two=0 / two=1; the way back joins them again. (GPT-OSS interleaves instead: models/gpt_oss.py.)
"""
from __future__ import annotations

from typing import Any

from models.spec import Param


def fused_experts(hf: str, mt: str, **kw: Any) -> tuple[Param, ...]:
  """gate_up_proj -> `mt`wi_0 and wi_1 ([experts, embed, moe_mlp]), down_proj -> `mt`wo
  ([experts, moe_mlp, embed]); needs the sizes `experts`, `moe_mlp`, `embed` and `two` = 2."""
  fused = hf + "gate_up_proj"
  return (Param(fused, mt + "wi_0", "experts (two moe_mlp) embed", "experts embed moe_mlp", part=("two", 0), **kw),
          Param(fused, mt + "wi_1", "experts (two moe_mlp) embed", "experts embed moe_mlp", part=("two", 1), **kw),
          Param(hf + "down_proj", mt + "wo", "experts embed moe_mlp", "experts moe_mlp embed", **kw))
