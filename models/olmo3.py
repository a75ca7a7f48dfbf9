"""OLMo 3: the Llama-like block with q/k RMSNorm over the whole projection (heads * head_dim, not per
head), post-norms only (after attention and after the MLP, none before), three sliding-window layers
then one global, untied lm_head.

MaxText's olmo3 (OLMO3_MAXTEXT_TO_HF_PARAM_* at e591f30) copies every value as it is: kernels
transpose, nothing is rescaled or reordered (no RoPE interleave; the query scale is applied at run
time). Scanned, one cycle of 4 layers is a block: decoder/layers/layers_{j} stacked on axis 1.
MaxText has no way back for OLMo 3; the planner derives ours from the same declaration.
"""
from __future__ import annotations

from typing import Any

from models.decoder import BLOCK, EMBEDDING, FINAL_NORM, LAYER, LM_HEAD, attention_params, decoder_sizes, gated_mlp
from models.layer_pattern import check_pattern
from models.spec import Config, Family, Param, Stack
from transforms.errors import ConversionError

CYCLE = 4  # MaxText's inhomogeneous_layer_cycle_interval: 3 sliding-window layers, then one global


def olmo3_sizes(config: Config) -> dict[str, Any]:
  """decoder_sizes; refuses what MaxText's olmo3 has no place for rather than drop it."""
  check_pattern(config, (CYCLE,), "olmo3")
  if config.get("attention_bias"):
    raise ConversionError("config.json: attention_bias is true, but MaxText's olmo3 attention has no biases")
  if config.get("tie_word_embeddings"):
    raise ConversionError("config.json: tie_word_embeddings is true, but MaxText's olmo3 has its own output layer "
                          "(logits_via_embedding=false) and the checkpoint has no lm_head.weight for it")
  return decoder_sizes(config)


def _scan_refused(config: Config) -> str | None:
  layers = config["num_hidden_layers"]
  if layers % CYCLE:
    return (f"MaxText's olmo3 scans whole cycles of {CYCLE} layers (inhomogeneous_layer_cycle_interval) and "
            f"{layers} layers leave {layers % CYCLE} over")
  return None


OLMO3 = Family(
    name="olmo3",
    architectures=("Olmo3ForCausalLM",),
    model_name_prefixes=("olmo3-",),
    sizes=olmo3_sizes,
    params=(
        EMBEDDING,
        *attention_params("attention", qk_norm="flat"),
        *gated_mlp(),
        Param(LAYER + "post_attention_layernorm.weight", BLOCK + "post_self_attention_layer_norm/scale", "embed",
              "embed"),
        Param(LAYER + "post_feedforward_layernorm.weight", BLOCK + "post_mlp_layer_norm/scale", "embed", "embed"),
        FINAL_NORM,
        LM_HEAD,
    ),
    stacks=(Stack(block=CYCLE, member="layers_{j}"),),
    scan_refused=_scan_refused,
)
