"""What a model family is: data that both directions and both layouts are derived from.

A family lists its parameters once. Each `Param` names the HF tensor (a pattern with `{layer}` for
decoder layers and `{expert}` for routed experts), the MaxText array (`{layers}` marks the layer
container, which the layout decides), the named axes on each side, and the few value ops that
axes cannot say. Which HF layers MaxText scans together, and how it names them, is the family's
`stacks`. The generic planner (`pipeline.planner`) expands layers, experts, stacking and direction;
families never branch on them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from transforms.tensor_ops import axes_shape

Config = Mapping[str, Any]


class ValueOp(Protocol):
  def forward(self, x: np.ndarray, sizes: Mapping[str, Any]) -> np.ndarray: ...
  def inverse(self, x: np.ndarray, sizes: Mapping[str, Any]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Stack:
  """HF decoder layers [start, stop) that MaxText scans as one container.

  Scanned, `block` consecutive HF layers make one scan step, stacked on axis 1 of every array
  under `scanned`; `member` (e.g. "layers_{j}") names the j-th layer of a block inside it, or is
  None when the block's layers are told apart by parameter names (Gemma2's _local/_global).
  Layers after the last whole block go, unstacked, under `remainder`/`member`.
  Unscanned, each layer (or, without `member`, each block) is its own `unscanned` container,
  numbered from 0 within the stack (`{i}`), or by its HF layer number (`{layer}`: DeepSeek V4, whose
  unscanned prefix and scanned blocks share one decoder/layers_N numbering).

  `nested` splits a scanned block into named groups of consecutive layers, (name, count) in block
  order (Gemma 4: 5 local layers, then 1 global): each group is the container `scanned`/name, and
  a group of more than one layer stacks its layers on a second axis right after the scan axis.
  `scans=False`: a tower MaxText never scans (a vision encoder): `unscanned` in both layouts.
  """
  name: str = "layers"
  scanned: str = "layers"
  unscanned: str = "layers_{i}"
  start: Callable[[Config], int] | int = 0
  stop: Callable[[Config], int] | None = None
  block: int = 1
  member: str | None = None
  remainder: str | None = None
  nested: tuple[tuple[str, int], ...] = ()
  scans: bool = True

  def bounds(self, config: Config, layers: int) -> tuple[int, int]:
    start = self.start(config) if callable(self.start) else self.start
    stop = layers if self.stop is None else self.stop(config)
    return start, stop


@dataclasses.dataclass(frozen=True)
class Param:
  """One HF tensor <-> one MaxText array, or one slice of a stacked array.

  `on(config, layer)` limits a layered parameter to some layers (local vs global attention, dense
  vs MoE). `dtype` pins the saved dtype (float32 scales next to bf16 weights). `part` = (axis, i)
  says the HF tensor holds several MaxText arrays along the named elementary axis and this one
  is index i of it (a fused gate_up split into wi_0 and wi_1). `piece` = (i, widths) is the
  converse: MaxText concatenates several HF tensors, each rearranged to `mt_axes` with its last axis
  cut to its own width, along that last axis (segments of the named `widths`, in order), and this one
  is segment i; `ops` then act on the whole array (Qwen3.5's in_proj_qkv and in_proj_z regrouped per
  key head into one in_proj_qkvz). Every piece of an array lists the same ops.
  `segment` = (i, widths) is `part` with unequal parts: the HF tensor's first axis is several MaxText
  arrays end to end (segments of the named `widths`, in order), this one segment i, and `hf_axes`
  describe that segment alone (V4's hyper-connection `fn` = pre | post | res rows).
  `fill`: no HF tensor at all; MaxText's array holds this value everywhere (a norm scale MaxText's
  model has and the checkpoint does not), and the way back writes nothing for it.
  `hf_dtype`: the HF tensor's own dtype, read as it is and written back as it (V4's float32
  hyper-connections and int64 hash routing table, which MaxText keeps in the save dtype).
  `scan_axis`: where scanned layers stack this array (default SCAN_AXIS; 0 for the variables MaxText
  keeps outside its params collection, which nn.scan stacks first).
  """
  hf: str
  mt: str
  hf_axes: str
  mt_axes: str
  ops: tuple[ValueOp, ...] = ()
  when: Callable[[Config], bool] | None = None
  stack: str = "layers"
  on: Callable[[Config, int], bool] | None = None
  dtype: str | None = None
  part: tuple[str, int] | None = None
  piece: tuple[int, tuple[str, ...]] | None = None
  segment: tuple[int, tuple[str, ...]] | None = None
  fill: float | None = None
  hf_dtype: str | None = None
  scan_axis: int | None = None

  @property
  def layered(self) -> bool:
    return "{layer}" in self.hf

  @property
  def per_expert(self) -> bool:
    return "{expert}" in self.hf

  def hf_shape(self, sizes: Mapping[str, Any]) -> tuple[int, ...]:
    """The whole HF tensor's shape (all of a `segment`'s segments)."""
    shape = axes_shape(self.hf_axes, sizes)
    if self.segment is None:
      return shape
    return (sum(sizes[w] for w in self.segment[1]), *shape[1:])

  def applies(self, config: Config) -> bool:
    return self.when is None or bool(self.when(config))

  def on_layer(self, config: Config, layer: int) -> bool:
    return self.on is None or bool(self.on(config, layer))


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: which configs it reads, how sizes follow from them, and its parameters."""
  name: str
  architectures: tuple[str, ...]
  model_name_prefixes: tuple[str, ...]
  sizes: Callable[[Config], dict[str, Any]]
  params: tuple[Param, ...]
  stacks: tuple[Stack, ...] = (Stack(),)
  # HF tensors that carry no weights MaxText keeps (regexes), e.g. cached rotary tables.
  ignored: tuple[str, ...] = ()
  # MaxText -> HF: the config.json to write, from the given one (which carries use_multimodal);
  # e.g. Gemma3's text-only model when the vision tower was not converted. None: as given.
  hf_config: Callable[[Config], dict[str, Any]] | None = None
  # MaxText's converter loads this family eagerly (Gemma3): every HF tensor is cast to the save dtype
  # before any transform. Every use_multimodal=true conversion does the same, whatever the family.
  eager_load: bool = False
  # Why MaxText's model cannot run this config with scan_layers=true (None: it can): a sentence;
  # both directions refuse the scanned layout with it, before anything is written.
  scan_refused: Callable[[Config], str | None] | None = None

  def param(self, key: int | str | tuple[int, ...]) -> Any:
    """By position in `params` (what plans carry: unique even where two stacks share a path), or
    by MaxText path when only one parameter has it. A tuple of positions (the pieces one array
    joins) gives a tuple of parameters."""
    if isinstance(key, tuple):
      return tuple(self.params[k] for k in key)
    if isinstance(key, int):
      return self.params[key]
    found = [p for p in self.params if p.mt == key]
    if len(found) != 1:
      raise KeyError(f"{self.name} has {len(found)} parameters {key}")
    return found[0]

  def key(self, param: Param) -> int:
    return next(i for i, p in enumerate(self.params) if p is param)

  def stack(self, name: str) -> Stack:
    for s in self.stacks:
      if s.name == name:
        return s
    raise KeyError(f"{self.name} has no layer stack {name}")


def untied(config: Config) -> bool:
  """The checkpoint has its own lm_head (MaxText then has decoder/logits_dense)."""
  return not config.get("tie_word_embeddings", False)
