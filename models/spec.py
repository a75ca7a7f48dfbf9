"""What a model family is: data that both directions and both layouts are derived from.

A family lists its parameters once. Each `Param` names the HF tensor (a pattern with `{layer}` for
decoder layers), the MaxText array (`{layers}` marks the stacked container: `layers` when scanned,
`layers_<i>` when not), the named axes on each side, and the few value ops that axes cannot say.
The generic planner (`pipeline.plan`) expands layers, stacking and direction; families never
branch on them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import numpy as np

Config = Mapping[str, Any]


class ValueOp(Protocol):
  def forward(self, x: np.ndarray, sizes: Mapping[str, Any]) -> np.ndarray: ...
  def inverse(self, x: np.ndarray, sizes: Mapping[str, Any]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Param:
  """One HF tensor <-> one MaxText array (or one slice of a stacked array)."""
  hf: str
  mt: str
  hf_axes: str
  mt_axes: str
  ops: tuple[ValueOp, ...] = ()
  when: Callable[[Config], bool] | None = None

  @property
  def layered(self) -> bool:
    return "{layer}" in self.hf

  def applies(self, config: Config) -> bool:
    return self.when is None or bool(self.when(config))


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: which configs it reads, how sizes follow from them, and its parameters."""
  name: str
  architectures: tuple[str, ...]
  model_name_prefixes: tuple[str, ...]
  sizes: Callable[[Config], dict[str, Any]]
  params: tuple[Param, ...]
  # HF tensors that carry no weights MaxText keeps (regexes), e.g. cached rotary tables.
  ignored: tuple[str, ...] = ()

  def param(self, mt: str) -> Param:
    for p in self.params:
      if p.mt == mt:
        return p
    raise KeyError(f"{self.name} has no parameter {mt}")

  def matches_model_name(self, model_name: str) -> bool:
    return any(model_name.startswith(p) for p in self.model_name_prefixes)


def untied(config: Config) -> bool:
  """The checkpoint has its own lm_head (MaxText then has decoder/logits_dense)."""
  return not config.get("tie_word_embeddings", False)
