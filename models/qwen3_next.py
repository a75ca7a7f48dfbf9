"""Qwen3-Next: gated DeltaNet (linear attention) layers with a gated full-attention layer every
`full_attention_interval` layers, and routed experts plus a sigmoid-gated shared expert in every layer.

MaxText scans one cycle of layers as a block (decoder/layers/layer_{j}, the last member being the
full-attention layer) and keeps the HF values as they are: both sides store the decoder RMSNorm
scales as w (applied as 1 + w) and the gated norm as w, and apply no RoPE reordering or query
scaling. Only layouts change: kernels transpose, the depthwise conv goes from torch's
(channels, 1, kernel) to flax's (kernel, 1, channels), and q_proj's per-head [query | gate] rows
become MaxText's query kernel of width 2 * head_dim.
"""
from __future__ import annotations

from typing import Any

from models.decoder import BLOCK, EMBEDDING, FINAL_NORM, LAYER, LM_HEAD, decoder_sizes, routed_experts
from models.spec import Config, Family, Param, Stack
from transforms.errors import ConversionError

# MaxText's qwen3-next scan block (inhomogeneous_layer_cycle_interval): three linear-attention
# layers then one full-attention layer, as in every released Qwen3-Next.
CYCLE = 4


def _full_attention(config: Config, layer: int) -> bool:
  types = config.get("layer_types")
  if types:
    return types[layer] == "full_attention"
  return (layer + 1) % config.get("full_attention_interval", CYCLE) == 0


def _linear_attention(config: Config, layer: int) -> bool:
  return not _full_attention(config, layer)


def qwen3_next_sizes(config: Config) -> dict[str, Any]:
  """Axis sizes; refuses layer patterns MaxText's fixed cycle cannot hold, rather than misplace them."""
  sizes = decoder_sizes(config)
  layers = sizes["layers"]
  if layers % CYCLE or any(_full_attention(config, i) != (i % CYCLE == CYCLE - 1) for i in range(layers)):
    raise ConversionError(f"config.json: MaxText's qwen3-next needs a full-attention layer exactly every "
                          f"{CYCLE}th layer of {layers}")
  if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
    raise ConversionError("config.json: MaxText's qwen3-next has routed experts in every layer "
                          "(no mlp_only_layers, decoder_sparse_step 1)")
  k_heads, v_heads = config["linear_num_key_heads"], config["linear_num_value_heads"]
  k_dim, v_dim = config["linear_key_head_dim"], config["linear_value_head_dim"]
  return {
      **sizes,
      "gated_head_dim": 2 * sizes["head_dim"],
      "experts": config["num_experts"],
      "moe_mlp": config["moe_intermediate_size"],
      "shared_mlp": config["shared_expert_intermediate_size"],
      "one": 1,
      "v_heads": v_heads,
      "v_head_dim": v_dim,
      "value": v_heads * v_dim,
      "qkvz": 2 * k_heads * k_dim + 2 * v_heads * v_dim,
      "ba": 2 * v_heads,
      "conv": 2 * k_heads * k_dim + v_heads * v_dim,
      "conv_kernel": config["linear_conv_kernel_dim"],
  }


def _linear_attention_params() -> tuple[Param, ...]:
  """In state-dict order: the module's own dt_bias and A_log come before its submodules' weights."""
  hf, mt = LAYER + "linear_attn.", BLOCK + "attention/"
  on = _linear_attention
  return (
      Param(hf + "dt_bias", mt + "dt_bias", "v_heads", "v_heads", on=on),
      Param(hf + "A_log", mt + "A_log", "v_heads", "v_heads", on=on),
      Param(hf + "conv1d.weight", mt + "conv1d/kernel", "conv one conv_kernel", "conv_kernel one conv", on=on),
      Param(hf + "in_proj_qkvz.weight", mt + "in_proj_qkvz/kernel", "qkvz embed", "embed qkvz", on=on),
      Param(hf + "in_proj_ba.weight", mt + "in_proj_ba/kernel", "ba embed", "embed ba", on=on),
      Param(hf + "norm.weight", mt + "norm/rms_norm/scale", "v_head_dim", "v_head_dim", on=on),
      Param(hf + "out_proj.weight", mt + "out_proj/kernel", "embed value", "value embed", on=on),
  )


def _full_attention_params() -> tuple[Param, ...]:
  """q_proj's rows are, per head, head_dim query rows then head_dim gate rows: one axis of 2 * head_dim."""
  hf, mt = LAYER + "self_attn.", BLOCK + "attention/attention/"
  on = _full_attention
  return (
      Param(hf + "q_proj.weight", mt + "query/kernel", "(heads gated_head_dim) embed",
            "embed heads gated_head_dim", on=on),
      Param(hf + "k_proj.weight", mt + "key/kernel", "(kv_heads head_dim) embed", "embed kv_heads head_dim", on=on),
      Param(hf + "v_proj.weight", mt + "value/kernel", "(kv_heads head_dim) embed", "embed kv_heads head_dim",
            on=on),
      Param(hf + "o_proj.weight", mt + "out/kernel", "embed (heads head_dim)", "(heads head_dim) embed", on=on),
      Param(hf + "q_norm.weight", mt + "query_norm/scale", "head_dim", "head_dim", on=on),
      Param(hf + "k_norm.weight", mt + "key_norm/scale", "head_dim", "head_dim", on=on),
  )


def _moe_params() -> tuple[Param, ...]:
  hf, mt = LAYER + "mlp.", BLOCK + "mlp/"
  return (
      *routed_experts("mlp", "mlp/routed_experts"),
      Param(hf + "shared_expert.gate_proj.weight", mt + "shared_expert/wi_0/kernel", "shared_mlp embed",
            "embed shared_mlp"),
      Param(hf + "shared_expert.up_proj.weight", mt + "shared_expert/wi_1/kernel", "shared_mlp embed",
            "embed shared_mlp"),
      Param(hf + "shared_expert.down_proj.weight", mt + "shared_expert/wo/kernel", "embed shared_mlp",
            "shared_mlp embed"),
      Param(hf + "shared_expert_gate.weight", mt + "shared_expert_gate/kernel", "one embed", "embed one"),
  )


QWEN3_NEXT = Family(
    name="qwen3-next",
    architectures=("Qwen3NextForCausalLM",),
    model_name_prefixes=("qwen3-next-",),
    sizes=qwen3_next_sizes,
    params=(
        EMBEDDING,
        *_linear_attention_params(),
        *_full_attention_params(),
        *_moe_params(),
        Param(LAYER + "input_layernorm.weight", BLOCK + "input_layernorm/scale", "embed", "embed"),
        Param(LAYER + "post_attention_layernorm.weight", BLOCK + "post_attention_layernorm/scale", "embed", "embed"),
        FINAL_NORM,
        LM_HEAD,
    ),
    stacks=(Stack(block=CYCLE, member="layer_{j}"),),
    # Multi-token-prediction weights of the released checkpoints; MaxText's model has no MTP head.
    ignored=(r"mtp\..*",),
)
