"""Qwen3-Omni, the thinker only: a Qwen3-MoE text decoder with per-expert keys under
`thinker.model.` (and `thinker.lm_head.`), the shared Qwen vision tower with deepstack mergers under
`thinker.visual.` (Omni's merger names: ln_q, mlp.0, mlp.2, merger_list), and the audio tower under
`thinker.audio_tower.`.

- MaxText's decoder is qwen3-moe's, always unscanned (deepstack, as Qwen3-VL).
- MaxText's model holds the audio encoder whether or not use_multimodal; the vision tower only with
  it. The way back (which MaxText lacks) writes the text model, plus both towers with
  use_multimodal=true; config.json as given.
- The talker and code2wav (speech output) have no place in MaxText: reported as ignored.
"""
from __future__ import annotations

from typing import Any

from models.decoder import decoder_params, moe_sizes, renamed, routed_experts
from models.qwen_audio import audio_params, audio_sizes, audio_stack
from models.qwen_vision import OMNI_MERGER, deepstack_refuses_scan, vision_params, vision_sizes, vision_stacks
from models.spec import Config, Family, Stack

THINKER = {"model.": "thinker.model.", "lm_head.": "thinker.lm_head."}
ENCODER, PROJECTOR = "Qwen3OmniMoeVisionEncoder_0", "Qwen3OmniMoeVisionProjector_0"


def qwen3_omni_sizes(config: Config) -> dict[str, Any]:
  return {**moe_sizes(config["thinker_config"]["text_config"]), **vision_sizes(config), **audio_sizes(config)}


QWEN3_OMNI = Family(
    name="qwen3-omni",
    architectures=("Qwen3OmniMoeForConditionalGeneration",),
    model_name_prefixes=("qwen3-omni-",),
    sizes=qwen3_omni_sizes,
    params=(*audio_params("thinker.audio_tower."),
            *vision_params("thinker.visual.", ENCODER, PROJECTOR, OMNI_MERGER, deepstack_first=True),
            *renamed(decoder_params(qk_norm=True, mlp=routed_experts("mlp", "moe_block")), THINKER)),
    stacks=(Stack(), *vision_stacks(ENCODER), audio_stack()),
    ignored=(r"talker\..*", r"code2wav\..*"),
    scan_refused=deepstack_refuses_scan,
)
