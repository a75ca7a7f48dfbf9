"""HF config.json of the released models, by MaxText model_name.

Used when MaxText -> HF runs without --hf_model_path (the Hub may be out of reach), and to check
that a given model_name agrees with a config.json. Values are the published configs.
"""
from __future__ import annotations

import copy
from typing import Any

_LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192, "rope_type": "llama3"}


def _llama31(hidden: int, mlp: int, layers: int, heads: int, eos: Any) -> dict[str, Any]:
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
      "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
      "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": 128,
      "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
      "rope_scaling": dict(_LLAMA31_ROPE), "bos_token_id": 128000, "eos_token_id": eos,
      "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
      "initializer_range": 0.02, "pretraining_tp": 1, "tie_word_embeddings": False, "use_cache": True,
      "torch_dtype": "bfloat16",
  }


def _qwen25(vocab: int, hidden: int, mlp: int, layers: int, heads: int, kv: int, tied: bool) -> dict[str, Any]:
  return {
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab,
      "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
      "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_act": "silu",
      "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "tie_word_embeddings": tied, "attention_bias": True, "use_cache": True, "torch_dtype": "bfloat16",
  }


def _qwen3(hidden: int, mlp: int, layers: int, heads: int, tied: bool) -> dict[str, Any]:
  return {
      "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
      "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
      "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
      "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "tie_word_embeddings": tied, "attention_bias": False, "use_cache": True, "torch_dtype": "bfloat16",
  }


KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3.1-8b": _llama31(4096, 14336, 32, 32, 128001),
    "llama3.1-70b": _llama31(8192, 28672, 80, 64, [128001, 128008, 128009]),
    "llama3.1-405b": _llama31(16384, 53248, 126, 128, 128001),
    "qwen2.5-1.5b": _qwen25(151936, 1536, 8960, 28, 12, 2, True),
    "qwen2.5-7b": _qwen25(152064, 3584, 18944, 28, 28, 4, False),
    "qwen2.5-14b": _qwen25(152064, 5120, 13824, 48, 40, 8, False),
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, False),
    "qwen3-14b": _qwen3(5120, 17408, 40, 40, False),
    "qwen3-32b": _qwen3(5120, 25600, 64, 64, False),
}


def known_config(model_name: str) -> dict[str, Any] | None:
  """A fresh copy of the released config for `model_name`, or None."""
  config = KNOWN_CONFIGS.get(model_name)
  return copy.deepcopy(config) if config is not None else None
