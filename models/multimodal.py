"""What multimodal families share: a text model nested under `text_config` (its tensors under a
language-model prefix), towers converted only with use_multimodal=true, and a text-only checkpoint
whose way back is the text model alone, saved as the family's causal-LM class.
"""
from __future__ import annotations

from typing import Any, Callable

from models.spec import Config


def nested(config: Config) -> bool:
  """The checkpoint is the multimodal model: its text model's config is `text_config`."""
  return "text_config" in config


def multimodal(config: Config) -> bool:
  """Towers are converted: a multimodal checkpoint converted with use_multimodal=true."""
  return nested(config) and bool(config.get("use_multimodal"))


def text_only_hf_config(architecture: str, model_type: str) -> Callable[[Config], dict[str, Any]]:
  """The config.json of the way back: without use_multimodal the checkpoint holds only the language
  model, written as `architecture` (text_config at the top, `model.` names), which transformers loads
  with no tower weights missing; otherwise the config as given."""

  def hf_config(config: Config) -> dict[str, Any]:
    out = dict(config)
    if not nested(config) or multimodal(config):
      return out
    text = {**out["text_config"], "architectures": [architecture], "model_type": model_type}
    for key in ("dtype", "torch_dtype", "tie_word_embeddings", "transformers_version"):
      if key in out:
        text.setdefault(key, out[key])
    return text

  return hf_config
