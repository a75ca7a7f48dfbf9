"""Qwen3-VL, dense and MoE: a Qwen3 text decoder (per-head q/k RMSNorm, mrope, which changes no
weight) under `model.language_model.`, the shared Qwen vision tower with deepstack mergers under
`model.visual.`.

- MaxText's decoder is qwen3's (dense) or qwen3-moe's (moe_block), always unscanned: deepstack
  injects visual features layer by layer, which its scanned decoder cannot.
- The MoE checkpoints keep the Hub layout of fused experts, gate_up_proj [E, H, 2I] (gate then up
  on the last axis) and down_proj [E, I, H]; MaxText has wi_0 / wi_1 / wo.
- The vision tower comes along with use_multimodal=true; otherwise it is reported unused, and the
  way back writes the text tensors (under their own names; config.json as given).
"""
from __future__ import annotations

from typing import Any

from models.decoder import decoder_params, decoder_sizes, fused_moe, moe_sizes, renamed
from models.qwen_vision import deepstack_refuses_scan, vision_params, vision_sizes, vision_stacks
from models.spec import Config, Family, Stack

TEXT = {"model.": "model.language_model."}
ENCODER, PROJECTOR = "Qwen3VLVisionEncoder_0", "Qwen3VLVisionProjector_0"


def qwen3_vl_sizes(config: Config) -> dict[str, Any]:
  return {**decoder_sizes(config["text_config"]), **vision_sizes(config)}


def qwen3_vl_moe_sizes(config: Config) -> dict[str, Any]:
  return {**moe_sizes(config["text_config"]), "two": 2, **vision_sizes(config)}


QWEN3_VL = Family(
    name="qwen3-vl",
    architectures=("Qwen3VLForConditionalGeneration",),
    model_name_prefixes=("qwen3-vl-",),
    sizes=qwen3_vl_sizes,
    params=(*vision_params("model.visual.", ENCODER, PROJECTOR), *renamed(decoder_params(qk_norm=True), TEXT)),
    stacks=(Stack(), *vision_stacks(ENCODER)),
    scan_refused=deepstack_refuses_scan,
)

QWEN3_VL_MOE = Family(
    name="qwen3-vl-moe",
    architectures=("Qwen3VLMoeForConditionalGeneration",),
    model_name_prefixes=("qwen3-vl-30b-a3b", "qwen3-vl-235b-a22b"),
    sizes=qwen3_vl_moe_sizes,
    params=(*vision_params("model.visual.", ENCODER, PROJECTOR),
            *renamed(decoder_params(qk_norm=True, mlp=fused_moe("mlp", "moe_block", "experts embed (two moe_mlp)",
                                                                    "experts moe_mlp embed")), TEXT)),
    stacks=(Stack(), *vision_stacks(ENCODER)),
    scan_refused=deepstack_refuses_scan,
)
