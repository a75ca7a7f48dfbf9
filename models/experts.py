"""Routed experts that HF stores fused, one tensor per layer for all experts (transformers 5's
`experts.gate_up_proj` / `experts.down_proj`), as MaxText's MoE block holds them: experts on axis 0,
gate and up split into wi_0 and wi_1.

transformers' `gate_up_proj` is [experts, 2 * moe_mlp, embed] with the gate rows first, then the up
rows (what `.chunk(2, dim=-1)` of its output reads), so its middle axis is "(two moe_mlp)" and wi_0 /
wi_1 are parts two=0 / two=1; the way back joins them again. The Hub's Qwen3-VL-MoE checkpoints lay
the same pair out as [experts, embed, 2 * moe_mlp] ("experts embed (two moe_mlp)"). (GPT-OSS
interleaves gate and up instead: models/gpt_oss.py.)
"""
from __future__ import annotations

from typing import Any

from models.spec import Param


def fused_experts(hf: str, mt: str, gate_up_axes: str = "experts (two moe_mlp) embed",
                  down_axes: str = "experts embed moe_mlp", **kw: Any) -> tuple[Param, ...]:
  """`hf`gate_up_proj -> `mt`wi_0 and wi_1 ([experts, embed, moe_mlp]), `hf`down_proj -> `mt`wo
  ([experts, moe_mlp, embed]); the axes say how the checkpoint lays them out (transformers' by
  default). Needs the sizes `experts`, `moe_mlp`, `embed` and `two` = 2."""
  fused = hf + "gate_up_proj"
  return (Param(fused, mt + "wi_0", gate_up_axes, "experts embed moe_mlp", part=("two", 0), **kw),
          Param(fused, mt + "wi_1", gate_up_axes, "experts embed moe_mlp", part=("two", 1), **kw),
          Param(hf + "down_proj", mt + "wo", down_axes, "experts moe_mlp embed", **kw))
