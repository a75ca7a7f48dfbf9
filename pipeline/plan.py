"""The driver-side plan: config.json + safetensors headers in, target tree + one task per slice out.

Reads no tensor bytes. Everything a worker needs travels in the task (addresses, not arrays), so
the plan is deterministic and the same for 1 or N workers.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import models
from models.spec import Family, Param
from pipeline.errors import ConversionError
from transforms import orbax_layout, storage
from transforms.orbax_layout import ArraySpec
from transforms.safetensors_io import TensorRef, list_checkpoint
from transforms.tensor_ops import axes_shape

PARAMS_PREFIX = "params/params/"
# MaxText stacks scanned layers on this axis (its `param_scan_axis`).
SCAN_AXIS = 1
SAVE_DTYPES = ("bfloat16", "float32")
SOURCE_DTYPES = {"BF16", "F16", "F32"}


@dataclasses.dataclass(frozen=True)
class SliceTask:
  """Write `sources` (one HF tensor, transformed by `param`) into `array` at `index`.

  `index` holds (axis, position) pairs for the stacked axes; empty when the task fills the array.
  """
  array: ArraySpec
  param: str
  index: tuple[tuple[int, int], ...]
  sources: tuple[TensorRef, ...]

  @property
  def nbytes(self) -> int:
    return sum(s.nbytes for s in self.sources)


@dataclasses.dataclass(frozen=True)
class Plan:
  family: str
  sizes: dict[str, Any]
  scan_layers: bool
  save_dtype: str
  arrays: tuple[ArraySpec, ...]
  tasks: tuple[SliceTask, ...]
  unused: tuple[str, ...]

  @property
  def source_bytes(self) -> int:
    return sum(t.nbytes for t in self.tasks)


def read_config(model_dir: str) -> dict[str, Any]:
  path = storage.join(model_dir, "config.json")
  if not storage.exists(path):
    raise ConversionError(f"{path}: no such file; --hf_model_path must be a Hugging Face model directory")
  try:
    return json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: not valid JSON ({e})") from None


def detect_family(config: dict[str, Any], model_name: str | None = None, where: str = "config.json") -> Family:
  """The family from config.json's architecture; `model_name`, when given, must agree with it."""
  archs = config.get("architectures") or []
  family = next((models.BY_ARCHITECTURE[a] for a in archs if a in models.BY_ARCHITECTURE), None)
  if family is None:
    supported = ", ".join(sorted(models.BY_ARCHITECTURE))
    raise ConversionError(f"{where}: unsupported architecture {archs or '(none given)'}; supported: {supported}")
  if model_name and not family.matches_model_name(model_name):
    named = next((f for f in models.FAMILIES if f.matches_model_name(model_name)), None)
    if named is None:
      known = ", ".join(p + "*" for f in models.FAMILIES for p in f.model_name_prefixes)
      raise ConversionError(f"model_name={model_name} is not a known model (known: {known})")
    raise ConversionError(f"model_name={model_name} is a {named.name} model but {where} describes "
                          f"{archs[0]} ({family.name}); fix model_name or omit it to auto-detect")
  return family


def family_sizes(family: Family, config: dict[str, Any], where: str) -> dict[str, Any]:
  try:
    return family.sizes(config)
  except KeyError as e:
    raise ConversionError(f"{where}: missing {e.args[0]!r}, which {family.name} needs") from None


def plan_to_maxtext(hf_model_path: str, scan_layers: bool = True, save_dtype: str = "bfloat16",
                    model_name: str | None = None, chunk_split: int = orbax_layout.DEFAULT_SPLIT) -> Plan:
  """Plans HF -> MaxText from headers only; raises ConversionError on any mismatch."""
  if save_dtype not in SAVE_DTYPES:
    raise ConversionError(f"--save_dtype={save_dtype} is not supported; use one of {list(SAVE_DTYPES)}")
  config_path = storage.join(hf_model_path, "config.json")
  config = read_config(hf_model_path)
  family = detect_family(config, model_name, config_path)
  sizes = family_sizes(family, config, config_path)
  tensors = list_checkpoint(hf_model_path)
  itemsize = orbax_layout.NUMPY_DTYPES[save_dtype].itemsize

  arrays: dict[str, ArraySpec] = {}
  tasks: list[SliceTask] = []
  used: set[str] = set()
  for param in family.params:
    if not param.applies(config):
      continue
    layers = range(sizes["layers"]) if param.layered else [None]
    for layer in layers:
      source = _source(param, layer, tensors, sizes, hf_model_path)
      used.add(source.name)
      array, index = _target(param, layer, scan_layers, sizes, save_dtype, itemsize, chunk_split)
      arrays.setdefault(array.path, array)
      tasks.append(SliceTask(array=array, param=param.mt, index=index, sources=(source,)))

  ignored = [re.compile(p) for p in family.ignored]
  unused = sorted(n for n in tensors if n not in used and not any(p.fullmatch(n) for p in ignored))
  return Plan(family=family.name, sizes=sizes, scan_layers=scan_layers, save_dtype=save_dtype,
              arrays=tuple(arrays[k] for k in sorted(arrays)), tasks=tuple(tasks), unused=tuple(unused))


def _source(param: Param, layer: int | None, tensors: dict[str, TensorRef], sizes: dict[str, Any],
            model_dir: str) -> TensorRef:
  name = param.hf.format(layer=layer)
  ref = tensors.get(name)
  if ref is None:
    raise ConversionError(f"{model_dir}: tensor {name} is missing from the checkpoint; config.json says the "
                          f"model has it (re-download the shards or fix config.json)")
  expected = axes_shape(param.hf_axes, sizes)
  if tuple(ref.shape) != expected:
    raise ConversionError(f"{ref.file}: tensor {name} has shape {list(ref.shape)} but config.json implies "
                          f"{list(expected)} ({param.hf_axes}); the shards and config.json disagree")
  if ref.dtype not in SOURCE_DTYPES:
    raise ConversionError(f"{ref.file}: tensor {name} has dtype {ref.dtype}; only {sorted(SOURCE_DTYPES)} "
                          f"sources are supported")
  return ref


def _target(param: Param, layer: int | None, scan_layers: bool, sizes: dict[str, Any], save_dtype: str,
            itemsize: int, chunk_split: int) -> tuple[ArraySpec, tuple[tuple[int, int], ...]]:
  shape = list(axes_shape(param.mt_axes, sizes))
  index: tuple[tuple[int, int], ...] = ()
  stacked: tuple[int, ...] = ()
  if layer is None:
    path = param.mt
  elif scan_layers:
    path = param.mt.format(layers="layers")
    shape.insert(SCAN_AXIS, sizes["layers"])
    index, stacked = ((SCAN_AXIS, layer),), (SCAN_AXIS,)
  else:
    path = param.mt.format(layers=f"layers_{layer}")
  chunks = orbax_layout.choose_chunks(shape, itemsize, stacked, chunk_split)
  return ArraySpec(PARAMS_PREFIX + path, tuple(shape), save_dtype, chunks), index
