"""The pre-norm decoder block that Llama and Qwen share, so each family file lists only its options.

Parameters are listed in the HF module order (embedding, each layer's attention then MLP then
norms, final norm, lm_head): the HF writer shards tensors in this order, as transformers does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from models.experts import fused_experts
from models.spec import Config, Param, Stack, ValueOp, untied

LAYER = "model.layers.{layer}."
BLOCK = "decoder/{layers}/"


# Shared by every decoder-only family: the token embedding, the final norm, an untied lm_head.
EMBEDDING = Param("model.embed_tokens.weight", "token_embedder/embedding", "vocab embed", "vocab embed")
FINAL_NORM = Param("model.norm.weight", "decoder/decoder_norm/scale", "embed", "embed")
LM_HEAD = Param("lm_head.weight", "decoder/logits_dense/kernel", "vocab embed", "embed vocab", when=untied)


def decoder_sizes(config: Config) -> dict[str, Any]:
  """Named axis sizes every family of this shape uses."""
  heads = config["num_attention_heads"]
  head_dim = config.get("head_dim") or config["hidden_size"] // heads
  return {
      "layers": config["num_hidden_layers"],
      "embed": config["hidden_size"],
      "vocab": config["vocab_size"],
      "heads": heads,
      "kv_heads": config.get("num_key_value_heads", heads),
      "head_dim": head_dim,
      "mlp": config["intermediate_size"],
      "query_scale": 1.0 / math.sqrt(head_dim),
  }


def layer_norms(stack: str = "layers") -> tuple[Param, ...]:
  """The pre-attention and post-attention RMSNorm scales of a decoder layer."""
  return (Param(LAYER + "input_layernorm.weight", BLOCK + "pre_self_attention_layer_norm/scale", "embed", "embed",
                stack=stack),
          Param(LAYER + "post_attention_layernorm.weight", BLOCK + "post_self_attention_layer_norm/scale", "embed",
                "embed", stack=stack))


def gated_mlp() -> tuple[Param, ...]:
  """SwiGLU MLP: gate -> wi_0, up -> wi_1, down -> wo."""
  return (
      Param(LAYER + "mlp.gate_proj.weight", BLOCK + "mlp/wi_0/kernel", "mlp embed", "embed mlp"),
      Param(LAYER + "mlp.up_proj.weight", BLOCK + "mlp/wi_1/kernel", "mlp embed", "embed mlp"),
      Param(LAYER + "mlp.down_proj.weight", BLOCK + "mlp/wo/kernel", "embed mlp", "mlp embed"),
  )


def routed_experts(hf_block: str, mt_block: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
                   router: str = "gate") -> tuple[Param, ...]:
  """A router and per-expert SwiGLU weights; MaxText stacks experts on axis 0 of wi_0/wi_1/wo."""
  gate, up, down = names
  experts = f"{LAYER}{hf_block}.experts.{{expert}}."
  mt = f"{BLOCK}{mt_block}/"
  return (
      Param(f"{LAYER}{hf_block}.{router}.weight", mt + "gate/kernel", "experts embed", "embed experts"),
      Param(f"{experts}{gate}.weight", mt + "wi_0", "moe_mlp embed", "embed moe_mlp"),
      Param(f"{experts}{up}.weight", mt + "wi_1", "moe_mlp embed", "embed moe_mlp"),
      Param(f"{experts}{down}.weight", mt + "wo", "embed moe_mlp", "moe_mlp embed"),
  )


def fused_moe(hf_block: str, mt_block: str, gate_up_axes: str, down_axes: str,
              router: str = "gate") -> tuple[Param, ...]:
  """A router and every expert in two fused HF tensors (models/experts.py) <-> MaxText's router and
  per-array experts wi_0/wi_1/wo (experts on axis 0)."""
  mt = f"{BLOCK}{mt_block}/"
  return (Param(f"{LAYER}{hf_block}.{router}.weight", mt + "gate/kernel", "experts embed", "embed experts"),
          *fused_experts(f"{LAYER}{hf_block}.experts.", mt, gate_up_axes, down_axes))


def renamed(params: tuple[Param, ...], prefixes: dict[str, str], **changes: Any) -> tuple[Param, ...]:
  """The same parameters under other HF prefixes (a text model nested in a multimodal one:
  "model." -> "model.language_model."), with `changes` (e.g. `when`) applied to each."""
  def rename(hf: str) -> str:
    return next((new + hf[len(old):] for old, new in prefixes.items() if hf.startswith(old)), hf)
  return tuple(dataclasses.replace(p, hf=rename(p.hf), **changes) for p in params)


def moe_sizes(config: Config) -> dict[str, Any]:
  """decoder_sizes plus the routed experts' count and width."""
  return {**decoder_sizes(config),
          "experts": config.get("num_experts") or config["num_local_experts"],
          "moe_mlp": config.get("moe_intermediate_size") or config["intermediate_size"]}


def attention_params(mt: str = "self_attention", query_ops: tuple[ValueOp, ...] = (),
                     key_ops: tuple[ValueOp, ...] = (), attention_bias: bool = False,
                     qk_norm: str | None = None) -> tuple[Param, ...]:
  """q/k/v/o projections of a decoder layer, MaxText's under BLOCK + `mt`.

  `attention_bias`: q/k/v carry biases (Qwen2.5). `qk_norm`: RMSNorm on q and k, "head" (one scale
  per head_dim, Qwen3) or "flat" (over the whole projection, heads * head_dim: OLMo 3)."""
  attn, mt_attn = LAYER + "self_attn.", f"{BLOCK}{mt}/"
  projections = (("q", "query", "heads", query_ops), ("k", "key", "kv_heads", key_ops),
                 ("v", "value", "kv_heads", ()))
  attention: list[Param] = []
  for hf, name, heads, ops in projections:
    attention.append(Param(f"{attn}{hf}_proj.weight", f"{mt_attn}{name}/kernel", f"({heads} head_dim) embed",
                           f"embed {heads} head_dim", ops=ops))
    if attention_bias:
      attention.append(Param(f"{attn}{hf}_proj.bias", f"{mt_attn}{name}/bias", f"({heads} head_dim)",
                             f"{heads} head_dim"))
  attention.append(Param(attn + "o_proj.weight", mt_attn + "out/kernel", "embed (heads head_dim)",
                         "heads head_dim embed"))
  if qk_norm:
    q, k = ("head_dim", "head_dim") if qk_norm == "head" else ("(heads head_dim)", "(kv_heads head_dim)")
    attention += [Param(attn + "q_norm.weight", mt_attn + "query_norm/scale", q, q),
                  Param(attn + "k_norm.weight", mt_attn + "key_norm/scale", k, k)]
  return tuple(attention)


def decoder_params(query_ops: tuple[ValueOp, ...] = (), key_ops: tuple[ValueOp, ...] = (),
                   attention_bias: bool = False, qk_norm: bool = False,
                   mlp: tuple[Param, ...] | None = None) -> tuple[Param, ...]:
  """Embedding, the attention + MLP block, final norm and lm_head.

  `attention_bias`: q/k/v projections carry biases (Qwen2.5). `qk_norm`: per-head RMSNorm on q
  and k (Qwen3). `mlp`: the block's MLP parameters (default: the gated MLP).
  """
  return (
      EMBEDDING,
      *attention_params(query_ops=query_ops, key_ops=key_ops, attention_bias=attention_bias,
                        qk_norm="head" if qk_norm else None),
      *(gated_mlp() if mlp is None else mlp),
      *layer_norms(),
      FINAL_NORM,
      LM_HEAD,
  )


def linear(hf: str, mt: str, hf_axes: str, mt_axes: str, bias: str | tuple[str, str] | None,
           **kw: Any) -> list[Param]:
  """A torch Linear: its weight, and its bias unless None (axes on both sides, or (HF, MaxText))."""
  out = [Param(hf + ".weight", mt + "/kernel", hf_axes, mt_axes, **kw)]
  if bias is None:
    return out
  hf_bias, mt_bias = (bias, bias) if isinstance(bias, str) else bias
  return out + [Param(hf + ".bias", mt + "/bias", hf_bias, mt_bias, **kw)]


def tower_stack(name: str, container: str, member: str, count: Callable[[Config], int]) -> Stack:
  """A vision or audio tower's `count(config)` layers, which MaxText never scans: `container/member_{i}`
  in both layouts."""
  return Stack(name=name, unscanned=f"{container}/{member}_{{i}}", scans=False, stop=count)