"""Gemma2, and the block Gemma3 shares with it: pre- and post-norms around attention and MLP,
RMSNorm scales stored +1 in MaxText, the embedding stored times sqrt(hidden), tied embeddings.

Gemma2: one MaxText layer is a (local, global) pair of HF layers told apart by parameter names
(`mlp_local` / `mlp_global`); the query carries query_pre_attn_scalar**-0.5, which MaxText's
gemma2 block does not apply at run time (it equals head_dim**-0.5 except on 27b).
"""
from __future__ import annotations

import math
from typing import Any

from models.decoder import decoder_sizes
from models.spec import Config, Family, Param, Stack, ValueOp
from transforms.tensor_ops import Offset, ResizeAxis, Scale

PLUS_ONE = (Offset(1.0),)


def layer_params(hf: str, mt: str, suffix: str = "", query_ops: tuple[ValueOp, ...] = (), qk_norm: bool = False,
                 norm_dtype: str | None = None, **kw: Any) -> tuple[Param, ...]:
  """One HF decoder layer in module order: attention, MLP, the four norms.

  `suffix` ends MaxText's sub-module names (Gemma2's "_local" / "_global")."""
  a, m = f"{hf}self_attn.", f"{mt}self_attention{suffix}/"
  norm = dict(ops=PLUS_ONE, dtype=norm_dtype, **kw)
  params = [
      Param(a + "q_proj.weight", m + "query/kernel", "(heads head_dim) embed", "embed heads head_dim",
            ops=query_ops, **kw),
      Param(a + "k_proj.weight", m + "key/kernel", "(kv_heads head_dim) embed", "embed kv_heads head_dim", **kw),
      Param(a + "v_proj.weight", m + "value/kernel", "(kv_heads head_dim) embed", "embed kv_heads head_dim", **kw),
      Param(a + "o_proj.weight", m + "out/kernel", "embed (heads head_dim)", "heads head_dim embed", **kw),
  ]
  if qk_norm:
    params += [Param(a + "q_norm.weight", m + "query_norm/scale", "head_dim", "head_dim", **norm),
               Param(a + "k_norm.weight", m + "key_norm/scale", "head_dim", "head_dim", **norm)]
  mlp = f"{mt}mlp{suffix}/"
  params += [
      Param(hf + "mlp.gate_proj.weight", mlp + "wi_0/kernel", "mlp embed", "embed mlp", **kw),
      Param(hf + "mlp.up_proj.weight", mlp + "wi_1/kernel", "mlp embed", "embed mlp", **kw),
      Param(hf + "mlp.down_proj.weight", mlp + "wo/kernel", "embed mlp", "mlp embed", **kw),
  ]
  return (*params, *sandwich_norms(hf, mt, suffix, **norm))


def sandwich_norms(hf: str, mt: str, suffix: str = "", **kw: Any) -> tuple[Param, ...]:
  """The four RMSNorms around attention and MLP (pre and post each) that Gemma 2, 3 and 4 layers share;
  `kw` says how the family stores them (Gemma 2/3: +1, Gemma 4: as they are)."""
  return tuple(Param(f"{hf}{hf_norm}.weight", f"{mt}{mt_norm}{suffix}/scale", "embed", "embed", **kw)
               for hf_norm, mt_norm in (("input_layernorm", "pre_self_attention_norm"),
                                        ("post_attention_layernorm", "post_self_attention_norm"),
                                        ("pre_feedforward_layernorm", "pre_ffw_norm"),
                                        ("post_feedforward_layernorm", "post_ffw_norm")))


def scaled_embedding(hf: str, **kw: Any) -> Param:
  """The token embedding MaxText stores times `embed_scale` (sqrt(hidden), as each family rounds it)
  and sized to its vocabulary."""
  return Param(hf, "token_embedder/embedding", "vocab embed", "vocab embed",
               ops=(Scale("embed_scale"), ResizeAxis(0)), **kw)


def text_params(hf: str, layers: tuple[Param, ...], norm_dtype: str | None = None, **kw: Any) -> tuple[Param, ...]:
  """Scaled embedding, the layers, final norm (+1)."""
  return (scaled_embedding(hf + "embed_tokens.weight", **kw),
          *layers,
          Param(hf + "norm.weight", "decoder/decoder_norm/scale", "embed", "embed", ops=PLUS_ONE, dtype=norm_dtype,
                **kw))


def gemma2_sizes(config: Config) -> dict[str, Any]:
  """The query scale is HF's query_pre_attn_scalar**-0.5 (head_dim**-0.5 for 2b/9b, not for 27b)."""
  sizes = decoder_sizes(config)
  scalar = config.get("query_pre_attn_scalar") or sizes["head_dim"]
  return {**sizes, "query_scale": 1.0 / math.sqrt(scalar), "embed_scale": math.sqrt(sizes["embed"])}


def _half(suffix: str, parity: int) -> tuple[Param, ...]:
  """The local (even HF layers) or global (odd) half of a MaxText Gemma2 layer."""
  return layer_params("model.layers.{layer}.", "decoder/{layers}/", suffix, (Scale("query_scale"),),
                      on=lambda c, layer: layer % 2 == parity)


GEMMA2 = Family(
    name="gemma2",
    architectures=("Gemma2ForCausalLM",),
    model_name_prefixes=("gemma2-",),
    sizes=gemma2_sizes,
    params=text_params("model.", _half("_local", 0) + _half("_global", 1)),
    stacks=(Stack(block=2),),
)
