"""The pre-norm decoder block that Llama and Qwen share, so each family file lists only its extras."""
from __future__ import annotations

import math
from typing import Any

from models.spec import Config, Param, ValueOp, untied

LAYER = "model.layers.{layer}."
BLOCK = "decoder/{layers}/"


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


def decoder_params(query_ops: tuple[ValueOp, ...] = (), key_ops: tuple[ValueOp, ...] = ()) -> tuple[Param, ...]:
  """Embedding, final norm, lm_head and the attention + gated-MLP block."""
  attn = LAYER + "self_attn."
  mt_attn = BLOCK + "self_attention/"
  return (
      Param("model.embed_tokens.weight", "token_embedder/embedding", "vocab embed", "vocab embed"),
      Param("model.norm.weight", "decoder/decoder_norm/scale", "embed", "embed"),
      Param("lm_head.weight", "decoder/logits_dense/kernel", "vocab embed", "embed vocab", when=untied),
      Param(LAYER + "input_layernorm.weight", BLOCK + "pre_self_attention_layer_norm/scale", "embed", "embed"),
      Param(LAYER + "post_attention_layernorm.weight", BLOCK + "post_self_attention_layer_norm/scale",
            "embed", "embed"),
      Param(attn + "q_proj.weight", mt_attn + "query/kernel", "(heads head_dim) embed", "embed heads head_dim",
            ops=query_ops),
      Param(attn + "k_proj.weight", mt_attn + "key/kernel", "(kv_heads head_dim) embed",
            "embed kv_heads head_dim", ops=key_ops),
      Param(attn + "v_proj.weight", mt_attn + "value/kernel", "(kv_heads head_dim) embed",
            "embed kv_heads head_dim"),
      Param(attn + "o_proj.weight", mt_attn + "out/kernel", "embed (heads head_dim)", "heads head_dim embed"),
      Param(LAYER + "mlp.gate_proj.weight", BLOCK + "mlp/wi_0/kernel", "mlp embed", "embed mlp"),
      Param(LAYER + "mlp.up_proj.weight", BLOCK + "mlp/wi_1/kernel", "mlp embed", "embed mlp"),
      Param(LAYER + "mlp.down_proj.weight", BLOCK + "mlp/wo/kernel", "embed mlp", "mlp embed"),
  )
