"""Per-layer embeddings (PLE, Gemma 4 E2B/E4B): a second token table, `hidden_size_per_layer_input`
wide for every layer at once, mixed with a projection of the hidden state, and in each layer a gate
and a projection back to the hidden width. MaxText keeps the table and its projection under
decoder/per_layer_embedder and the per-layer weights in each layer, all values as they are.

Needs the sizes `ple` (per-layer width), `ple_vocab` (its vocabulary) and `ple_all` (layers * ple).
"""
from __future__ import annotations

from typing import Callable

from models.spec import Config, Param

MT = "decoder/per_layer_embedder/"


def ple_sizes(text: Config) -> dict[str, int]:
  ple = text["hidden_size_per_layer_input"]
  return {"ple": ple, "ple_vocab": text["vocab_size_per_layer_input"], "ple_all": text["num_hidden_layers"] * ple}


def ple_layer(layer: str, mt: str, when: Callable[[Config], bool]) -> tuple[Param, ...]:
  """One layer's gate (embed -> ple), projection (ple -> embed) and the norm after it."""
  return (Param(layer + "per_layer_input_gate.weight", mt + "per_layer_input_gate/kernel", "ple embed", "embed ple",
                when=when),
          Param(layer + "per_layer_projection.weight", mt + "per_layer_projection/kernel", "embed ple", "ple embed",
                when=when),
          Param(layer + "post_per_layer_input_norm.weight", mt + "post_per_layer_input_norm/scale", "embed", "embed",
                when=when))


def ple_model(hf: str, when: Callable[[Config], bool]) -> tuple[Param, ...]:
  """The table, the hidden state's projection to every layer's input, and its norm."""
  return (Param(hf + "embed_tokens_per_layer.weight", MT + "embed_tokens_per_layer", "ple_vocab ple_all",
                "ple_vocab ple_all", when=when),
          Param(hf + "per_layer_model_projection.weight", MT + "per_layer_model_projection/kernel", "ple_all embed",
                "embed ple_all", when=when),
          Param(hf + "per_layer_projection_norm.weight", MT + "per_layer_projection_norm/scale", "ple", "ple",
                when=when))
