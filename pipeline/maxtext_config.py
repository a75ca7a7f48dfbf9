"""What MaxText's own config accepts, so a typo is refused here as MaxText would refuse it.

pipeline/maxtext_config.json holds MaxText's config keys and model names at the commit our goldens
come from (written once by scripts/maxtext_tables.py, which names the commit). Everything here is
a pure lookup: which words are MaxText's, the closest ones to a typo, and the MaxText overrides
that describe a config.json whose dimensions are not those of the model_name it was given.
"""
from __future__ import annotations

import difflib
import functools
import json
import os
from typing import Any, Iterable, Sequence

from models.known_configs import known_config
from transforms.errors import ConversionError

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "maxtext_config.json")


@functools.lru_cache(maxsize=None)
def _table() -> dict[str, Any]:
  with open(_PATH, encoding="utf-8") as f:
    return json.load(f)


def commit() -> str:
  return _table()["commit"]


@functools.lru_cache(maxsize=None)
def keys() -> frozenset[str]:
  return frozenset(_table()["keys"])


@functools.lru_cache(maxsize=None)
def model_names() -> tuple[str, ...]:
  return tuple(_table()["model_names"])


def is_key(key: str) -> bool:
  """A key MaxText's config has: a base.yml key, or a field of one of its sections (lora.lora_rank)."""
  return key in keys()


def closest(word: str, candidates: Iterable[str], n: int = 1) -> list[str]:
  """The nearest candidates to a typo, best first (none when nothing is close)."""
  pool = sorted(set(candidates))
  found = difflib.get_close_matches(word, pool, n=n, cutoff=0.6)
  if not found:  # a different case, or a name that only lacks its tail ("qwen3" -> qwen3-0.6b ...)
    lowered = {c.lower(): c for c in pool}
    found = [lowered[c] for c in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)]
  return found


def did_you_mean(word: str, candidates: Iterable[str], n: int = 1, prefix: str = "") -> str:
  """ ' (did you mean X?)' or ' (did you mean X, Y or Z?)', or '' when nothing is close."""
  found = [prefix + c for c in closest(word, candidates, n)]
  if not found:
    return ""
  shown = found[0] if len(found) == 1 else ", ".join(found[:-1]) + " or " + found[-1]
  return f" (did you mean {shown}?)"


def check_model_name(model_name: str) -> None:
  """model_name must be one MaxText has, spelled as MaxText spells it."""
  if model_name in model_names():
    return
  hint = did_you_mean(model_name, model_names(), n=3)
  raise ConversionError(f"model_name={model_name} is not a MaxText model name{hint}; the names are those of "
                        f"MaxText's configs/models (MaxText {commit()[:7]})")


def _text(config: dict[str, Any]) -> dict[str, Any]:
  """The language model's config: multimodal configs nest it (Qwen3-Omni inside its thinker)."""
  return (config.get("thinker_config") or {}).get("text_config") or config.get("text_config") or config


# config.json fields MaxText names alike or directly. MAXTEXT_DIMENSIONS are the keys of
# maxtext_config.json's model_dimensions (scripts/maxtext_tables.py lists them again, as DIMENSIONS).
_DIRECT = (("hidden_size", "base_emb_dim"), ("num_attention_heads", "base_num_query_heads"),
           ("num_key_value_heads", "base_num_kv_heads"), ("vocab_size", "vocab_size"),
           ("num_local_experts", "num_experts"), ("num_experts", "num_experts"), ("n_routed_experts", "num_experts"),
           ("num_experts_per_tok", "num_experts_per_tok"), ("top_k_experts", "num_experts_per_tok"),
           ("n_shared_experts", "shared_experts"),
           ("first_k_dense_replace", "first_num_dense_layers"), ("q_lora_rank", "q_lora_rank"),
           ("kv_lora_rank", "kv_lora_rank"), ("qk_nope_head_dim", "qk_nope_head_dim"),
           ("qk_rope_head_dim", "qk_rope_head_dim"), ("v_head_dim", "v_head_dim"))


MAXTEXT_DIMENSIONS = tuple(dict.fromkeys([*(k for _, k in _DIRECT), "head_dim", "base_num_decoder_layers",
                                          "base_mlp_dim", "base_moe_mlp_dim"]))


def maxtext_dimensions(config: dict[str, Any]) -> dict[str, int]:
  """config.json's dimensions as MaxText's model configs (configs/models/*.yml) state them."""
  text = _text(config)

  def number(field: str) -> int | None:
    value = text.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
  dims = {key: number(field) for field, key in _DIRECT if number(field) is not None}
  if number("kv_lora_rank") is not None:
    pass  # multi-head latent attention sizes its heads by the ranks above, not head_dim
  elif number("head_dim") is not None:
    dims["head_dim"] = number("head_dim")
  elif number("hidden_size") and number("num_attention_heads"):
    dims["head_dim"] = number("hidden_size") // number("num_attention_heads")  # each yml states it
  layers = number("num_hidden_layers")
  if layers is not None:  # Gemma 2 pairs a local and a global attention layer into one MaxText layer
    dims["base_num_decoder_layers"] = layers // 2 if text.get("model_type") == "gemma2" else layers
  dense, moe = number("intermediate_size"), number("moe_intermediate_size")
  if moe is not None and str(text.get("model_type", "")).startswith("qwen"):
    dims["base_mlp_dim"] = dims["base_moe_mlp_dim"] = moe  # Qwen3 MoE / Next / 3.5: both sized by the expert
  elif moe is not None:  # DeepSeek, Gemma 4: dense layers and experts have their own sizes
    dims.update({k: v for k, v in (("base_mlp_dim", dense), ("base_moe_mlp_dim", moe)) if v is not None})
  elif dense is not None and "num_experts" in dims:  # Mixtral, gpt-oss: intermediate_size is the expert's
    dims["base_mlp_dim"] = dims["base_moe_mlp_dim"] = dense
  elif dense is not None:
    dims["base_mlp_dim"] = dense
  return dims


def model_dimensions(model_name: str) -> dict[str, int] | None:
  """The dimensions MaxText's configs/models/<model_name>.yml sets (-Instruct shares its base's, as in MaxText)."""
  table = _table()["model_dimensions"]
  return table.get(model_name, table.get(model_name.replace("-Instruct", "")))


def overrides(config: dict[str, Any], model_name: str) -> list[str]:
  """The MaxText key=value words under which `model_name` has `config`'s dimensions: those where MaxText's
  own model config (else the released model's config.json) says otherwise; [] when they agree."""
  theirs = model_dimensions(model_name)
  if theirs is None:
    built_in = known_config(model_name)
    if built_in is None:
      return []
    theirs = maxtext_dimensions(built_in)
  ours = maxtext_dimensions(config)
  return [f"{key}={value}" for key, value in ours.items() if key in theirs and theirs[key] != value]


def dimension_note(config: dict[str, Any], model_name: str, where: str) -> str | None:
  """One line for a config whose dimensions are not model_name's, with the overrides that load the result."""
  words = overrides(config, model_name)
  if not words:
    return None
  return (f"{where} has other dimensions than MaxText's {model_name}; MaxText loads the result with "
          f"model_name={model_name} " + " ".join(["override_model_config=true", *words]))


def unknown_key(key: str, own: Sequence[str]) -> str:
  """The error line of a key=value word that neither this command nor MaxText knows."""
  return f"unknown key {key!r}" + did_you_mean(key, [*own, *keys()])
