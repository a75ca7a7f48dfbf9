"""Qwen3.5-MoE: the hybrid decoder of models/gated_deltanet.py (3 gated-DeltaNet layers then one
gated full-attention layer per cycle, scanned one cycle per step) under `model.language_model.`,
fused routed experts beside a sigmoid-gated shared expert, and the shared Qwen vision tower (no
deepstack) under `model.visual.`.

- The checkpoints hold DeltaNet's q, k, v in one in_proj_qkv (each head-major), z, b and a apart:
  MaxText joins them per key head into in_proj_qkvz and in_proj_ba (Param.piece + GroupByHead);
  the way back cuts them out again.
- Experts are transformers' fused layout, gate_up_proj [E, 2I, H] (gate rows then up rows) and
  down_proj [E, H, I]. MaxText's own way back saves a strided view of gate_up_proj as is; ours
  writes the tensor.
- The multi-token-prediction weights (mtp.*) have no place in MaxText's model: reported ignored.
"""
from __future__ import annotations

from typing import Any

from models.decoder import EMBEDDING, FINAL_NORM, LM_HEAD, fused_moe, renamed
from models.gated_deltanet import (STACK, deltanet_params, gated_attention_params, hybrid_norms, hybrid_sizes,
                                   shared_expert_params)
from models.qwen_vision import vision_params, vision_sizes, vision_stacks
from models.spec import Config, Family

ENCODER, PROJECTOR = "Qwen3_5MoeVisionEncoder_0", "Qwen3_5MoeVisionProjector_0"


def qwen3_5_moe_sizes(config: Config) -> dict[str, Any]:
  return {**hybrid_sizes(config["text_config"], "qwen3.5-moe"), **vision_sizes(config)}


QWEN3_5_MOE = Family(
    name="qwen3.5-moe",
    architectures=("Qwen3_5MoeForConditionalGeneration",),
    model_name_prefixes=("qwen3.5-",),
    sizes=qwen3_5_moe_sizes,
    params=(
        *vision_params("model.visual.", ENCODER, PROJECTOR),
        *renamed((EMBEDDING,
                  *deltanet_params(joined=True),
                  *gated_attention_params(),
                  *fused_moe("mlp", "mlp/routed_experts", "experts (two moe_mlp) embed", "experts embed moe_mlp"),
                  *shared_expert_params(),
                  *hybrid_norms(),
                  FINAL_NORM,
                  LM_HEAD), {"model.": "model.language_model."}),
    ),
    stacks=(STACK, *vision_stacks(ENCODER)),
    ignored=(r"mtp\..*",),
)
