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
