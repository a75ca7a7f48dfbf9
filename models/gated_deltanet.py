"""The hybrid decoder Qwen3-Next and Qwen3.5 share: gated DeltaNet (linear attention) layers with a
gated full-attention layer every 4th, a sigmoid-gated shared expert beside the routed experts.

MaxText holds both families alike (decoder/layers_{i}/attention/..., scanned one 4-layer cycle per
step as decoder/layers/layer_{j}) and keeps HF's values as they are: the RMSNorm scales are w on
both sides, no RoPE reordering, no folded query scale. Only layouts change: kernels transpose, the
depthwise conv goes from torch's (channels, 1, kernel) to flax's (kernel, 1, channels), q_proj's
per-head [query | gate] rows become a query kernel of width 2 * head_dim, and the DeltaNet input
projections are MaxText's per-key-head groups: in_proj_qkvz = [q k v... z...] and in_proj_ba =
[b... a...] for each key head. Qwen3-Next's checkpoints already hold them grouped so; Qwen3.5's
hold q, k, v (each head-major) in in_proj_qkv, z, b and a apart, joined here by `GroupByHead`.
"""
from __future__ import annotations

from typing import Any

from models.decoder import BLOCK, LAYER, decoder_sizes
from models.spec import Config, Param, Stack
from transforms.errors import ConversionError
from transforms.tensor_ops import GroupByHead

# MaxText's scan block (inhomogeneous_layer_cycle_interval): three linear-attention layers then
# one full-attention layer, as in every released Qwen3-Next and Qwen3.5.
CYCLE = 4
STACK = Stack(block=CYCLE, member="layer_{j}")


def full_attention(config: Config, layer: int) -> bool:
  config = config.get("text_config", config)
  types = config.get("layer_types")
  if types:
    return types[layer] == "full_attention"
  return (layer + 1) % config.get("full_attention_interval", CYCLE) == 0


def linear_attention(config: Config, layer: int) -> bool:
  return not full_attention(config, layer)


def hybrid_sizes(config: Config, name: str) -> dict[str, Any]:
  """Axis sizes of the text config; refuses layer patterns MaxText's fixed cycle cannot hold, rather
  than misplace them."""
  sizes = decoder_sizes({"intermediate_size": None, **config})  # Qwen3.5's configs name no dense MLP width
  layers = sizes["layers"]
  if layers % CYCLE or any(full_attention(config, i) != (i % CYCLE == CYCLE - 1) for i in range(layers)):
    raise ConversionError(f"config.json: MaxText's {name} needs a full-attention layer exactly every "
                          f"{CYCLE}th layer of {layers}")
  if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
    raise ConversionError(f"config.json: MaxText's {name} has routed experts in every layer "
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
      "two": 2,
      "k_heads": k_heads,
      "k_dim": k_dim,
      "v_heads": v_heads,
      "v_head_dim": v_dim,
      "v_group": v_heads // k_heads * v_dim,  # the value (and z) width of one key head
      "v_per_k": v_heads // k_heads,
      "value": v_heads * v_dim,
      "qkvz": 2 * k_heads * k_dim + 2 * v_heads * v_dim,
      "ba": 2 * v_heads,
      "conv": 2 * k_heads * k_dim + v_heads * v_dim,
      "qkv": 2 * k_heads * k_dim + v_heads * v_dim,
      "conv_kernel": config["linear_conv_kernel_dim"],
  }


def _deltanet_projections(hf: str, mt: str, joined: bool) -> list[Param]:
  """in_proj_qkvz and in_proj_ba: taken as they are (Qwen3-Next) or joined per key head (Qwen3.5)."""
  on = linear_attention
  if not joined:
    return [Param(hf + "in_proj_qkvz.weight", mt + "in_proj_qkvz/kernel", "qkvz embed", "embed qkvz", on=on),
            Param(hf + "in_proj_ba.weight", mt + "in_proj_ba/kernel", "ba embed", "embed ba", on=on)]
  qkvz = (GroupByHead("k_heads", ("k_dim", "k_dim", "v_group", "v_group")),)
  ba = (GroupByHead("k_heads", ("v_per_k", "v_per_k")),)
  kernel = mt + "in_proj_qkvz/kernel"
  return [Param(hf + "in_proj_qkv.weight", kernel, "qkv embed", "embed qkvz", qkvz, on=on, piece=(0, ("qkv", "value"))),
          Param(hf + "in_proj_z.weight", kernel, "value embed", "embed qkvz", qkvz, on=on, piece=(1, ("qkv", "value"))),
          Param(hf + "in_proj_b.weight", mt + "in_proj_ba/kernel", "v_heads embed", "embed ba", ba, on=on,
                piece=(0, ("v_heads", "v_heads"))),
          Param(hf + "in_proj_a.weight", mt + "in_proj_ba/kernel", "v_heads embed", "embed ba", ba, on=on,
                piece=(1, ("v_heads", "v_heads")))]


def deltanet_params(joined: bool = False) -> tuple[Param, ...]:
  """A linear-attention layer in its checkpoint's state-dict order: the module's own dt_bias and
  A_log first, then its submodules (Qwen3.5 registers its input projections last)."""
  hf, mt = LAYER + "linear_attn.", BLOCK + "attention/"
  on = linear_attention
  projections = _deltanet_projections(hf, mt, joined)
  rest = [Param(hf + "norm.weight", mt + "norm/rms_norm/scale", "v_head_dim", "v_head_dim", on=on),
          Param(hf + "out_proj.weight", mt + "out_proj/kernel", "embed value", "value embed", on=on)]
  return (
      Param(hf + "dt_bias", mt + "dt_bias", "v_heads", "v_heads", on=on),
      Param(hf + "A_log", mt + "A_log", "v_heads", "v_heads", on=on),
      Param(hf + "conv1d.weight", mt + "conv1d/kernel", "conv one conv_kernel", "conv_kernel one conv", on=on),
      *(rest + projections if joined else projections + rest),
  )


def gated_attention_params() -> tuple[Param, ...]:
  """q_proj's rows are, per head, head_dim query rows then head_dim gate rows: one axis of 2 * head_dim."""
  hf, mt = LAYER + "self_attn.", BLOCK + "attention/attention/"
  on = full_attention
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


def shared_expert_params() -> tuple[Param, ...]:
  """The always-on expert and its sigmoid gate, after the routed experts."""
  hf, mt = LAYER + "mlp.", BLOCK + "mlp/"
  return (
      Param(hf + "shared_expert.gate_proj.weight", mt + "shared_expert/wi_0/kernel", "shared_mlp embed",
            "embed shared_mlp"),
      Param(hf + "shared_expert.up_proj.weight", mt + "shared_expert/wi_1/kernel", "shared_mlp embed",
            "embed shared_mlp"),
      Param(hf + "shared_expert.down_proj.weight", mt + "shared_expert/wo/kernel", "embed shared_mlp",
            "shared_mlp embed"),
      Param(hf + "shared_expert_gate.weight", mt + "shared_expert_gate/kernel", "one embed", "embed one"),
  )


def hybrid_norms() -> tuple[Param, ...]:
  return (Param(LAYER + "input_layernorm.weight", BLOCK + "input_layernorm/scale", "embed", "embed"),
          Param(LAYER + "post_attention_layernorm.weight", BLOCK + "post_attention_layernorm/scale", "embed",
                "embed"))
