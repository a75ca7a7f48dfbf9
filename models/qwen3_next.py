"""Qwen3-Next: the hybrid decoder of models/gated_deltanet.py (gated DeltaNet layers with a gated
full-attention layer every 4th), with per-expert routed experts and a sigmoid-gated shared expert in
every layer.

Its checkpoints already hold the DeltaNet projections grouped per key head as MaxText does
(in_proj_qkvz, in_proj_ba): every tensor only changes layout.
"""
from __future__ import annotations

from typing import Any

from models.decoder import EMBEDDING, FINAL_NORM, LM_HEAD, routed_experts
from models.gated_deltanet import (STACK, deltanet_params, gated_attention_params, hybrid_norms, hybrid_sizes,
                                   shared_expert_params)
from models.spec import Config, Family


def qwen3_next_sizes(config: Config) -> dict[str, Any]:
  return hybrid_sizes(config, "qwen3-next")


QWEN3_NEXT = Family(
    name="qwen3-next",
    architectures=("Qwen3NextForCausalLM",),
    model_name_prefixes=("qwen3-next-",),
    sizes=qwen3_next_sizes,
    params=(
        EMBEDDING,
        *deltanet_params(),
        *gated_attention_params(),
        *routed_experts("mlp", "mlp/routed_experts"),
        *shared_expert_params(),
        *hybrid_norms(),
        FINAL_NORM,
        LM_HEAD,
    ),
    stacks=(STACK,),
    # Multi-token-prediction weights of the released checkpoints; MaxText's model has no MTP head.
    ignored=(r"mtp\..*",),
)
