"""GPT-OSS: attention with q/k/v/o biases and per-head sinks, a biased router and fused experts.

Facts that differ from the Llama-like block (models/decoder.py), checked against MaxText's goldens:
- MaxText names the blocks GptOssAttention and GptOssMlp, and scans the layers in blocks of two
  (sliding, then full attention: its inhomogeneous_layer_cycle_interval): HF layer i is member
  layers_{i % 2} of scan step i // 2. Unscanned, each layer is decoder/layers_{i}.
- No value ops: MaxText keeps HF's rotate-half RoPE order and applies 1/sqrt(head_dim) at run time.
- HF stores each layer's experts as whole tensors, experts first. gate_up_proj is
  [experts, embed, 2 * moe_mlp] with gate and up INTERLEAVED on the last axis (gate at even,
  up at odd positions, as transformers' GptOssExperts reads it), so the last axis is
  "(moe_mlp two)" and wi_0 / wi_1 are its parts two=0 / two=1; the same holds for its bias.
Only bf16/f16/f32 sources; MXFP4-quantized experts are not read here.
"""
from __future__ import annotations

from typing import Any

from models.decoder import BLOCK, EMBEDDING, FINAL_NORM, LAYER, LM_HEAD, layer_norms, moe_sizes
from models.spec import Config, Family, Param, Stack

ATTN, MT_ATTN = LAYER + "self_attn.", BLOCK + "GptOssAttention/"
MLP, MT_MLP = LAYER + "mlp.", BLOCK + "GptOssMlp/"


def sizes(config: Config) -> dict[str, Any]:
  """moe_sizes, plus `two`: the gate/up pair interleaved on the fused experts' last axis."""
  return {**moe_sizes(config), "two": 2}


def _attention_bias(config: Config) -> bool:
  return bool(config.get("attention_bias", True))


def _attention() -> list[Param]:
  """q/k/v/o kernels and biases (heads split out on the MaxText side), then the sinks."""
  params: list[Param] = []
  for hf, mt, heads in (("q", "query", "heads"), ("k", "key", "kv_heads"), ("v", "value", "kv_heads")):
    params += [
        Param(f"{ATTN}{hf}_proj.weight", f"{MT_ATTN}{mt}/kernel", f"({heads} head_dim) embed",
              f"embed {heads} head_dim"),
        Param(f"{ATTN}{hf}_proj.bias", f"{MT_ATTN}{mt}/bias", f"({heads} head_dim)", f"{heads} head_dim",
              when=_attention_bias),
    ]
  return params + [
      Param(ATTN + "o_proj.weight", MT_ATTN + "out/kernel", "embed (heads head_dim)", "heads head_dim embed"),
      Param(ATTN + "o_proj.bias", MT_ATTN + "out/bias", "embed", "embed", when=_attention_bias),
      Param(ATTN + "sinks", MT_ATTN + "sinks", "heads", "heads"),
  ]


def _experts() -> list[Param]:
  """The router, then gate_up (split into wi_0/wi_1 by `part`) and down; experts stay on axis 0."""
  fused = MLP + "experts.gate_up_proj"
  return [
      Param(MLP + "router.weight", MT_MLP + "gate/kernel", "experts embed", "embed experts"),
      Param(MLP + "router.bias", MT_MLP + "gate/bias", "experts", "experts"),
      Param(fused, MT_MLP + "wi_0", "experts embed (moe_mlp two)", "experts embed moe_mlp", part=("two", 0)),
      Param(fused, MT_MLP + "wi_1", "experts embed (moe_mlp two)", "experts embed moe_mlp", part=("two", 1)),
      Param(fused + "_bias", MT_MLP + "wi_0_bias", "experts (moe_mlp two)", "experts moe_mlp", part=("two", 0)),
      Param(fused + "_bias", MT_MLP + "wi_1_bias", "experts (moe_mlp two)", "experts moe_mlp", part=("two", 1)),
      Param(MLP + "experts.down_proj", MT_MLP + "wo", "experts moe_mlp embed", "experts moe_mlp embed"),
      Param(MLP + "experts.down_proj_bias", MT_MLP + "wo_bias", "experts embed", "experts embed"),
  ]


GPT_OSS = Family(
    name="gpt-oss",
    architectures=("GptOssForCausalLM",),
    model_name_prefixes=("gpt-oss-",),
    sizes=sizes,
    params=(
        EMBEDDING,
        *_attention(),
        *_experts(),
        *layer_norms(),
        FINAL_NORM,
        LM_HEAD,
    ),
    stacks=(Stack(block=2, member="layers_{j}"),),
)
