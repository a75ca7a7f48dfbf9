"""HF config.json of the released models, by MaxText model_name (models/known_configs.json).

Used when MaxText -> HF runs without --hf_model_path (the Hub may be out of reach), and to tell
which family a model_name belongs to. The JSON holds the published configs as transformers 5
expands them (every field explicit), generated once from MaxText's own table of HF configs.
"""
from __future__ import annotations

import copy
import functools
import json
import os
from typing import Any

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "known_configs.json")


@functools.lru_cache(maxsize=None)
def _table() -> dict[str, dict[str, Any]]:
  with open(_PATH, encoding="utf-8") as f:
    return json.load(f)


def known_model_names() -> list[str]:
  return sorted(_table())


def known_config(model_name: str) -> dict[str, Any] | None:
  """A fresh copy of the released config for `model_name`, or None."""
  config = _table().get(model_name)
  return copy.deepcopy(config) if config is not None else None


# Where MaxText's model config sizes the vocabulary differently from HF's (its configs/models/*.yml):
# the embedding is padded with zeros (Gemma2) or truncated (Gemma3) to this many rows.
MAXTEXT_VOCAB = {"gemma2-2b": 256128, "gemma2-9b": 256128, "gemma2-27b": 256128,
                 "gemma3-4b": 262144, "gemma3-12b": 262144, "gemma3-27b": 262144}


def maxtext_vocab(model_name: str | None) -> int | None:
  return MAXTEXT_VOCAB.get(model_name or "")


# The Hub repository each MaxText model_name converts from when no --hf_model_path is given. Repo
# ids as MaxText's own converter uses them (maxtext.utils.globals.HF_IDS); the Qwen3 base and
# 1.7B models, which MaxText's table lacks, are Qwen's own repos of the same names.
HUB_REPOS = {
    "deepseek2-16b": "deepseek-ai/DeepSeek-V2-Lite",
    "deepseek3-671b": "deepseek-ai/DeepSeek-V3",
    "deepseek3.2-671b": "deepseek-ai/DeepSeek-V3.2",
    "gemma2-2b": "google/gemma-2-2b",
    "gemma2-9b": "google/gemma-2-9b",
    "gemma2-27b": "google/gemma-2-27b",
    "gemma3-4b": "google/gemma-3-4b-it",
    "gemma3-12b": "google/gemma-3-12b-it",
    "gemma3-27b": "google/gemma-3-27b-it",
    "gemma4-26b": "google/gemma-4-26b-a4b-it",
    "gemma4-31b": "google/gemma-4-31b-it",
    "gemma4-e2b": "google/gemma-4-E2B-it",
    "gemma4-e4b": "google/gemma-4-E4B-it",
    "gpt-oss-20b": "unsloth/gpt-oss-20b-BF16",
    "gpt-oss-120b": "unsloth/gpt-oss-120b-BF16",
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama3.1-8b-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.1-70b": "meta-llama/Llama-3.1-70B",
    "llama3.1-405b": "meta-llama/Llama-3.1-405B",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "mixtral-8x22b": "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "olmo3-7b": "allenai/Olmo-3-7B-Instruct",
    "olmo3-7b-pt": "allenai/Olmo-3-1025-7B",
    "olmo3-32b": "allenai/Olmo-3-32B-Think",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-14b": "Qwen/Qwen2.5-14B-Instruct",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-1.7b-base": "Qwen/Qwen3-1.7B-Base",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-4b-base": "Qwen/Qwen3-4B-Base",
    "qwen3-4b-thinking-2507": "Qwen/Qwen3-4B-Thinking-2507",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-8b-base": "Qwen/Qwen3-8B-Base",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "qwen3-14b-base": "Qwen/Qwen3-14B-Base",
    "qwen3-32b": "Qwen/Qwen3-32B",
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B-Thinking-2507",
    "qwen3-30b-a3b-base": "Qwen/Qwen3-30B-A3B-Base",
    "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B-Thinking-2507",
    "qwen3-480b-a35b": "Qwen/Qwen3-Coder-480B-A35B-Instruct",
    "qwen3-next-80b-a3b": "Qwen/Qwen3-Next-80B-A3B-Instruct",
    "qwen3-omni-30b-a3b": "Qwen/Qwen3-Omni-30B-A3B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-30b-a3b": "Qwen/Qwen3-VL-30B-A3B-Instruct",
    "qwen3.5-35b-a3b": "Qwen/Qwen3.5-35B-A3B",
    "qwen3.5-397b-a17b": "Qwen/Qwen3.5-397B-A17B",
}


def hub_repo(model_name: str | None) -> str | None:
  """The default Hub repo id of a MaxText model_name, or None."""
  return HUB_REPOS.get(model_name or "")
