"""A random Llama-shaped HF checkpoint of a chosen size, for tests that need a run to last a while
(interrupting it midway) or to need a known number of bytes (filling a small disk)."""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np

from tests import goldens
from transforms.safetensors_io import INDEX_FILE, write_safetensors


def write_llama(out: str, hidden: int = 256, layers: int = 4, vocab: int = 4096, intermediate: int | None = None,
                shards: int = 2, seed: int = 0) -> str:
  """A llama3.1 model directory (config.json, `shards` safetensors files and their index) whose
  tensors are normal random bf16 values; 64-wide heads."""
  with open(goldens.path("llama3.1", "hf", "config.json")) as f:
    config = json.load(f)
  heads, kv_heads, head_dim = hidden // 64, max(1, hidden // 256), 64
  intermediate = intermediate or 3 * hidden
  config.update(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab, intermediate_size=intermediate,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim)
  shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
            "lm_head.weight": (vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                   p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                   p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                   p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                   p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                   p + "mlp.down_proj.weight": (hidden, intermediate)})
  rng = np.random.default_rng(seed)
  names = sorted(shapes)
  groups = [names[i::shards] for i in range(shards)]
  os.makedirs(out, exist_ok=True)
  weight_map = {}
  for i, group in enumerate(groups, 1):
    file = f"model-{i:05d}-of-{shards:05d}.safetensors"
    write_safetensors(os.path.join(out, file), {
        n: (rng.standard_normal(shapes[n], dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16) for n in group})
    weight_map.update({n: file for n in group})
  with open(os.path.join(out, INDEX_FILE), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f)
  return out


def nbytes(model_dir: str) -> int:
  return sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir) if n.endswith(".safetensors"))
