"""LoRA adapters as a family derived from the base family's own parameters, for both directions.

A PEFT adapter on an HF linear weight W [out, in] holds lora_A [r, in] and lora_B [out, r], and the
adapted weight is W + (alpha / r) B A. MaxText keeps the factors beside the kernel it adapts, as
`.../<kernel path>_lora_a/value` = A.T [in, r] and `.../kernel_lora_b/value` = B.T [r, out] (both
axes flattened as in HF), stacked on the scan axis like the kernel. The kernel's value ops act on
its output side (the RoPE order of q and k, the query's attention scale), so they apply to B as
they apply to W, and A carries none: that keeps the product A.T B.T equal to the kernel's delta.

`lora_family(family)` is the base family with every such parameter replaced by its two factors
(same layer stacks, same `on`/`when`), so the generic planner, writer and reader handle adapters
like any model: scan/unscan, both directions and the ops' inverses come for free. A parameter is
LoRA-able when it is one layered 2-D HF `.weight` of one MaxText `kernel`, with only ops that act
on the output axes linearly; fused (`part`) and per-expert tensors are not.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from models.spec import Config, Family, Param
from transforms.lora import RANK, TARGETS, peft_name
from transforms.tensor_ops import Regroup, RopeInterleave, Scale, parse_axes

SUFFIX = "+lora"
# Ops that act on a kernel's output axes, linearly: B carries them. Any other op (offsets, resized
# axes) makes a parameter not LoRA-able.
OUTPUT_OPS = (RopeInterleave, Scale)


@dataclasses.dataclass(frozen=True)
class Factors:
  """A LoRA-able base parameter and its two derived factor parameters."""
  base: Param
  a: Param
  b: Param


def _flat(axes: tuple[str, ...]) -> str:
  return axes[0] if len(axes) == 1 else "(" + " ".join(axes) + ")"


def lora_able(param: Param) -> bool:
  groups = parse_axes(param.hf_axes)
  if (not param.layered or param.per_expert or param.part is not None or not param.hf.endswith(".weight")
      or not param.mt.endswith("/kernel") or len(groups) != 2):
    return False
  out, inputs = groups
  mt_elems = tuple(a for g in parse_axes(param.mt_axes) for a in g)
  return mt_elems == inputs + out and all(isinstance(op, OUTPUT_OPS) for op in param.ops)


def factors(param: Param) -> Factors | None:
  """The factor parameters of a LoRA-able `param` (None otherwise)."""
  if not lora_able(param):
    return None
  out, inputs = parse_axes(param.hf_axes)
  when = functools.partial(_targeted, param.hf, param.when)
  kernel = param.mt.removesuffix("kernel")
  a = dataclasses.replace(param, hf=peft_name(param.hf, "A"), mt=kernel + "kernel_lora_a/value",
                          hf_axes=f"{RANK} {_flat(inputs)}", mt_axes=f"{_flat(inputs)} {RANK}", ops=(), when=when,
                          dtype=None)
  b_ops = param.ops
  b_axes = f"{RANK} {' '.join(out)}"
  if len(out) > 1:  # the ops see the output axes apart, MaxText stores them merged
    b_ops = (*b_ops, Regroup(b_axes, f"{RANK} {_flat(out)}"))
  b = dataclasses.replace(param, hf=peft_name(param.hf, "B"), mt=kernel + "kernel_lora_b/value",
                          hf_axes=f"{_flat(out)} {RANK}", mt_axes=b_axes, ops=b_ops, when=when, dtype=None)
  return Factors(param, a, b)


def _targeted(hf: str, when: Any, config: Config) -> bool:
  """A factor applies when the adapter adapts its base parameter (config[TARGETS]: their HF names)."""
  return hf in config.get(TARGETS, ()) and (when is None or bool(when(config)))


def _sizes(base_sizes: Any, config: Config) -> dict[str, Any]:
  return {**base_sizes(config), RANK: config[RANK]}


@functools.lru_cache(maxsize=None)
def lora_family(family: Family) -> Family | None:
  """`family`'s adapters: every LoRA-able parameter as its A and B factors, in module order."""
  pairs = [f for f in map(factors, family.params) if f is not None]
  if not pairs:
    return None
  return Family(name=family.name + SUFFIX, architectures=(), model_name_prefixes=(),
                sizes=functools.partial(_sizes, family.sizes), params=tuple(p for f in pairs for p in (f.a, f.b)),
                stacks=family.stacks)


def base_family(family: Family) -> str | None:
  """The base family's name of a derived LoRA family (None for a base family)."""
  return family.name.removesuffix(SUFFIX) if family.name.endswith(SUFFIX) else None


def lora_factors(family: Family) -> tuple[Factors, ...]:
  """Every LoRA-able parameter of a base family with its factors, in module order."""
  return tuple(f for f in map(factors, family.params) if f is not None)


def module_name(hf: str) -> str:
  """The PEFT target module of an HF weight name: model.layers.{layer}.self_attn.q_proj.weight -> q_proj."""
  return hf.rsplit(".", 2)[-2]
