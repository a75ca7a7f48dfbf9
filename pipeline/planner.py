"""The driver-side plan: config.json + safetensors headers in, target tree + one task per slice out.

Reads no tensor bytes. Everything a worker needs travels in the task (addresses, not arrays), so
the plan is deterministic and the same for 1 or N workers.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
import sys
from typing import Any, Callable, Protocol

import models
from models.known_configs import known_config, maxtext_vocab
from models.spec import Family, Param
from transforms.errors import ConversionError
from pipeline import maxtext_config
from pipeline.row_blocks import SPLIT_BYTES, RowBlock, Split, find_split
from transforms import checkpoint_tree, orbax_layout, storage
from transforms.checkpoint_tree import TreeLayout
from transforms.orbax_layout import ArraySpec
from transforms.orbax_reader import OrbaxRef
from transforms.filled import FilledRef
from transforms.quantized import QuantizedRef, dequantized_nbytes, logical_tensors
from transforms.safetensors_io import TensorRef, list_checkpoint
from transforms.tensor_ops import axes_shape

# A conversion source: an HF tensor (plain or quantized), or a slice of a MaxText checkpoint array.
SourceRef = TensorRef | QuantizedRef | OrbaxRef | FilledRef
# MaxText stacks scanned layers on this axis (its `param_scan_axis`).
SCAN_AXIS = 1
SAVE_DTYPES = ("bfloat16", "float32")
SOURCE_DTYPES = {"BF16", "F16", "F32"}


@dataclasses.dataclass(frozen=True)
class SliceTask:
  """Write `sources` into `array` at `index`: one HF tensor transformed by the family's `param`-th
  Param, or one slice of a MaxText checkpoint (already in MaxText's layout: only cast and re-chunked).

  `index` holds (axis, position) pairs for the stacked axes; empty when the task fills the array.
  A tensor too big for one element is split: `block` says which rows of the source it reads and
  where they go along the array's axis `block_axis` (see pipeline.row_blocks). An array that joins
  several HF tensors (`Param.piece`) is one task: `param` is then the tuple of its pieces' positions,
  one per source. `source_dtype`: the dtype each source is cast to as read, before any transform
  (MaxText's eager loading), or None.
  """
  array: ArraySpec
  param: int | tuple[int, ...]
  index: tuple[tuple[int, int], ...]
  sources: tuple[SourceRef, ...]
  block: RowBlock | None = None
  block_axis: int | None = None
  source_dtype: str | None = None

  @property
  def rows(self) -> tuple[int, int] | None:
    return None if self.block is None else self.block.rows

  @property
  def window(self) -> tuple[int, int, int] | None:
    return None if self.block is None else (self.block_axis, *self.block.positions)

  @functools.cached_property  # (a plan asks each of its tens of thousands of tasks several times)
  def nbytes(self) -> int:
    """Bytes read from the source."""
    return sum(s.rows_nbytes(self.rows) for s in self.sources)

  @functools.cached_property
  def written_nbytes(self) -> int:
    shape = self.array.shape
    expr = orbax_layout.region(len(shape), self.index, self.window)
    return (math.prod(len(range(*e.indices(n))) for e, n in zip(expr, shape) if isinstance(e, slice))
            * orbax_layout.NUMPY_DTYPES[self.array.dtype].itemsize)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a conversion to MaxText writes: every array and one task per slice, from any source.

  `tree` is the target's tree layout (Linen `params/params/...` + `step`, or NNX parameter-only);
  `source` the HF model directory or the MaxText checkpoint item read.
  """
  family: str
  sizes: dict[str, Any]
  scan_layers: bool
  save_dtype: str
  arrays: tuple[ArraySpec, ...]
  tasks: tuple[SliceTask, ...]
  unused: tuple[str, ...]
  tree: TreeLayout = checkpoint_tree.LINEN
  source: str | None = None

  @property
  def source_bytes(self) -> int:
    return sum(t.nbytes for t in self.tasks)

  @property
  def elements(self) -> tuple[tuple[SliceTask, ...], ...]:
    """The pipeline's elements: each task alone, except tasks whose sources share stored chunks (a
    MaxText checkpoint whose chunks hold every layer), which go together so the chunks are read once."""
    return elements(self.tasks)

  @property
  def dequantized_bytes(self) -> int:
    """What the sources hold once dequantized (float32 for quantized ones); source_bytes otherwise."""
    return sum(dequantized_nbytes(s) for s in {s.name: s for t in self.tasks for s in t.sources}.values())


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int, flag: str = "--max_shard_size") -> int:
  """'5GB' -> 5 * 10**9 (as transformers reads max_shard_size); '500MiB' and plain bytes work too."""
  if isinstance(text, int):
    return text
  match = _SIZE.match(str(text))
  if not match:
    raise ConversionError(f"{flag}={text} is not a size like 5GB, 500MB or 2GiB")
  return int(float(match.group(1)) * _UNITS[match.group(2).upper() if match.group(2) else None])


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
  if model_name:
    named = family_of_model_name(model_name)
    if named is not family:
      raise ConversionError(f"model_name={model_name} is a {named.name} model but {where} describes "
                            f"{archs[0]} ({family.name}); fix model_name or omit it to auto-detect")
    _note_once(maxtext_config.dimension_note(config, model_name, where))
  return family


_NOTED: set[str] = set()


def _note_once(note: str | None) -> None:
  """A note about the command line, printed once however many times the config is planned from."""
  if note and note not in _NOTED:
    _NOTED.add(note)
    print(f"note: {note}", file=sys.stderr)


BUILT_IN = "the built-in config of "


def config_hint(where: str) -> str:
  """What to do when a checkpoint disagrees with `where`: a built-in config may simply not be the model's."""
  if where.startswith(BUILT_IN):
    return ("; the checkpoint has other dimensions than the released model: pass --hf_model_path=DIR with the "
            "config.json of the HF model it was converted from")
  return ""


def family_of_model_name(model_name: str) -> Family:
  """The family of a MaxText model name (one MaxText has, spelled as MaxText does): exact for released
  models, else by name prefix."""
  maxtext_config.check_model_name(model_name)
  config = known_config(model_name)
  if config is not None:
    return models.BY_ARCHITECTURE[config["architectures"][0]]
  matches = [f for f in models.FAMILIES for p in f.model_name_prefixes if model_name.startswith(p)]
  if not matches:
    known = ", ".join(p + "*" for f in models.FAMILIES for p in f.model_name_prefixes)
    raise ConversionError(f"model_name={model_name} is a MaxText model ckptflow does not convert (it converts: {known})")
  return max(matches, key=lambda f: max(len(p) for p in f.model_name_prefixes if model_name.startswith(p)))


OPTION_KEYS = ("use_multimodal", "maxtext_vocab_size", "direction")


def without_options(config: dict[str, Any]) -> dict[str, Any]:
  """The config as config.json holds it: `with_options`' keys taken out."""
  return {k: v for k, v in config.items() if k not in OPTION_KEYS}


def with_options(config: dict[str, Any], use_multimodal: bool, model_name: str | None = None,
                 vocab_size: int | None = None, direction: str = "to_maxtext") -> dict[str, Any]:
  """The config as specs see it: plus the conversion's own switches (`Param.when` may read them:
  `direction` is "to_maxtext" or "to_huggingface") and MaxText's vocabulary size (vocab_size=,
  else MaxText's own for model_name, else HF's)."""
  return {**config, "use_multimodal": use_multimodal,
          "maxtext_vocab_size": vocab_size or maxtext_vocab(model_name), "direction": direction}


def family_sizes(family: Family, config: dict[str, Any], where: str) -> dict[str, Any]:
  try:
    sizes = family.sizes(config)
  except KeyError as e:
    raise ConversionError(f"{where}: missing {e.args[0]!r}, which {family.name} needs") from None
  if "vocab" in sizes:
    sizes["maxtext_vocab"] = config.get("maxtext_vocab_size") or sizes["vocab"]
  return sizes


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where one HF tensor (or one part of it) lives in MaxText: the array's model path
  (`decoder/layers/mlp/wi_0/kernel`, the same in every tree layout), its shape, the slice."""
  param: Param
  hf_name: str
  model_path: str
  array_shape: tuple[int, ...]
  index: tuple[tuple[int, int], ...]

  @property
  def array_path(self) -> str:
    """The array's path in a Linen tree (`params/params/<model path>`), as to_maxtext writes it."""
    return checkpoint_tree.LINEN.stored(self.model_path)

  @property
  def stacked_axes(self) -> tuple[int, ...]:
    return tuple(axis for axis, _ in self.index)

  @property
  def free_axes(self) -> tuple[int, ...]:
    """The array's axes a slice spans: MaxText's per-layer parameter axes."""
    return tuple(a for a in range(len(self.array_shape)) if a not in self.stacked_axes)


def placements(family: Family, config: dict[str, Any], sizes: dict[str, Any],
               scan_layers: bool) -> list[Placement]:
  """Every parameter of the model in HF module order: the family's list, with each run of layered
  parameters expanded layer by layer (a run of per-expert ones expert by expert). That is the
  order transformers shards a checkpoint in; a model with two towers (vision, then text) has
  two runs, each between its own unlayered parameters."""
  reason = scan_layers and family.scan_refused and family.scan_refused(config)
  if reason:
    raise ConversionError(f"scan_layers=true: {reason}; convert with scan_layers=false")
  params = [p for p in family.params if p.applies(config)]
  order: list[tuple[Param, int | None, int | None]] = []
  for layered, run in itertools.groupby(params, key=lambda p: p.layered):
    order += _by_layer(family, list(run), config, sizes) if layered else [(p, None, None) for p in run]
  return [_place(family, p, layer, expert, scan_layers, config, sizes) for p, layer, expert in order]


def _by_layer(family: Family, layered: list[Param], config: dict[str, Any],
              sizes: dict[str, Any]) -> list[tuple[Param, int | None, int | None]]:
  order: list[tuple[Param, int | None, int | None]] = []
  # A stack may end past the decoder's last layer (a vision tower with more layers than the text model).
  count = max(family.stack(p.stack).bounds(config, sizes["layers"])[1] for p in layered)
  for layer in range(count):
    present = [p for p in layered if _in_stack(family, p, config, sizes, layer) and p.on_layer(config, layer)]
    i = 0
    while i < len(present):
      run = [present[i]]
      while present[i].per_expert and i + len(run) < len(present) and present[i + len(run)].per_expert:
        run.append(present[i + len(run)])
      experts = range(sizes["experts"]) if run[0].per_expert else [None]
      order += [(p, layer, e) for e in experts for p in run]
      i += len(run)
  return order


def mt_shape(param: Param, sizes: dict[str, Any]) -> list[int]:
  """The MaxText slice's shape: its axes, then what ops that resize an axis make of it."""
  shape = axes_shape(param.mt_axes, sizes)
  for op in param.ops:
    if hasattr(op, "shape"):
      shape = op.shape(shape, sizes)
  return list(shape)


def _in_stack(family: Family, param: Param, config: dict[str, Any], sizes: dict[str, Any], layer: int) -> bool:
  start, stop = family.stack(param.stack).bounds(config, sizes["layers"])
  return start <= layer < stop


def _place(family: Family, param: Param, layer: int | None, expert: int | None, scan_layers: bool,
           config: dict[str, Any], sizes: dict[str, Any]) -> Placement:
  """MaxText's layout: experts lead (axis 0), scanned layers stack on axis 1 (param_scan_axis)."""
  shape = mt_shape(param, sizes)
  index: list[tuple[int, int]] = []
  if expert is not None:
    shape.insert(0, sizes["experts"])
    index.append((0, expert))
  path = param.mt
  if layer is not None:
    stack = family.stack(param.stack)
    start, stop = stack.bounds(config, sizes["layers"])
    step, member = divmod(layer - start, stack.block)
    if not scan_layers or not stack.scans:
      container = stack.unscanned.format(i=layer - start if stack.member or stack.nested else step, layer=layer)
    elif step < (stop - start) // stack.block:
      scan_axis = SCAN_AXIS if param.scan_axis is None else param.scan_axis
      shape.insert(scan_axis, (stop - start) // stack.block)
      index.append((scan_axis, step))
      if stack.nested:
        group, position, count = _nested_member(stack, member)
        container = f"{stack.scanned}/{group}"
        if count > 1:
          shape.insert(SCAN_AXIS + 1, count)
          index.append((SCAN_AXIS + 1, position))
      else:
        container = stack.scanned + ("/" + stack.member.format(j=member) if stack.member else "")
    else:
      container = f"{stack.remainder}/{stack.member.format(j=member)}"
    path = param.mt.format(layers=container)
  return Placement(param, param.hf.format(layer=layer, expert=expert), path, tuple(shape), tuple(index))


def _nested_member(stack, member: int) -> tuple[str, int, int]:
  """(group, position within it, group size) of the `member`-th layer of a nested scan block."""
  first = 0
  for group, count in stack.nested:
    if member < first + count:
      return group, member - first, count
    first += count
  raise ValueError(f"stack {stack.name}: block member {member} is in none of {stack.nested}")


class SliceSources(Protocol):
  """Where a plan's slices come from: the one thing that differs between an HF model and a MaxText checkpoint."""

  def find(self, place: Placement) -> SourceRef:
    """The source of one placement (raises ConversionError when the source lacks it)."""

  def dtype(self, place: Placement, ref: SourceRef) -> str:
    """The saved dtype of the placement's array."""

  def block(self, ref: SourceRef, split: Split, block: RowBlock) -> tuple[SourceRef, RowBlock]:
    """The source and block a split task reads (`block.rows` index the source's rows)."""

  def split(self, place: Placement, ref: SourceRef, itemsize: int, split_bytes: int) -> Split | None:
    """How the placement's slice divides into row blocks (None: one task)."""


class HfTensors:
  """An HF model's tensors, each transformed by its Param; the family's pinned dtypes, else `save_dtype`."""

  def __init__(self, model_dir: str, tensors: dict[str, TensorRef | QuantizedRef], sizes: dict[str, Any],
               save_dtype: str):
    self.model_dir, self.tensors, self.sizes, self.save_dtype = model_dir, tensors, sizes, save_dtype

  def find(self, place: Placement) -> SourceRef:
    if place.param.fill is not None:
      return FilledRef(place.hf_name, place.param.hf_shape(self.sizes), place.param.fill)
    return _source(place, self.tensors, self.sizes, self.model_dir)

  def dtype(self, place: Placement, ref: SourceRef) -> str:
    return place.param.dtype or self.save_dtype

  def block(self, ref: SourceRef, split: Split, block: RowBlock) -> tuple[SourceRef, RowBlock]:
    return ref, block

  def split(self, place: Placement, ref: SourceRef, itemsize: int, split_bytes: int) -> Split | None:
    return split_by_rows(place, ref, self.sizes, itemsize, split_bytes)


def split_by_rows(place: Placement, ref: SourceRef, sizes: dict[str, Any], itemsize: int,
                  split_bytes: int) -> Split | None:
  """Row blocks of whole units of the HF tensor's first axis (pipeline.row_blocks), at most `split_bytes`."""
  source_itemsize = ref.nbytes // max(math.prod(ref.shape), 1)
  return find_split(place.param, sizes, tuple(mt_shape(place.param, sizes)), source_itemsize, itemsize, split_bytes)


def elements(tasks: tuple[SliceTask, ...]) -> tuple[tuple[SliceTask, ...], ...]:
  """Tasks grouped by the stored chunks their sources share (OrbaxRef.shared_chunks), in plan order."""
  groups: dict[Any, list[SliceTask]] = {}
  for n, task in enumerate(tasks):
    ref = task.sources[0]
    shared = ref.shared_chunks(task.rows) if isinstance(ref, OrbaxRef) else None
    groups.setdefault(n if shared is None else shared, []).append(task)
  return tuple(tuple(group) for group in groups.values())


def plan_slices(family: Family, config: dict[str, Any], sizes: dict[str, Any], scan_layers: bool,
                sources: SliceSources, chunk_split: int = orbax_layout.DEFAULT_SPLIT, split_bytes: int = SPLIT_BYTES,
                tree: TreeLayout = checkpoint_tree.LINEN,
                source_dtype: str | None = None) -> tuple[tuple[ArraySpec, ...], tuple[SliceTask, ...]]:
  """Every array of the target layout and one task per slice (per row block of a big one), whatever the source.

  Arrays are chunked like MaxText's (`chunk_split` ways along the first axis it divides, 1 on
  stacked axes), or one row block wide along a split axis, so no two tasks share a chunk. An array
  that joins several HF tensors (`Param.piece`) is one task once all its pieces are placed (a MaxText
  source holds it joined already: one task of its first piece). `source_dtype`: the eager cast.
  """
  arrays: dict[str, ArraySpec] = {}
  tasks: list[SliceTask] = []
  pieces: dict[tuple[str, tuple[tuple[int, int], ...]], list[tuple[Param, SourceRef]]] = {}
  for place in placements(family, config, sizes, scan_layers):
    if place.param.piece is not None and not isinstance(sources, HfTensors) and place.param.piece[0] != 0:
      continue
    source = sources.find(place)
    dtype = sources.dtype(place, source)
    itemsize = orbax_layout.NUMPY_DTYPES[dtype].itemsize
    key = family.key(place.param)
    path = tree.stored(place.model_path)
    if place.param.piece is not None:
      group = pieces.setdefault((path, place.index), [])
      group.append((place.param, source))
      if isinstance(sources, HfTensors) and len(group) < len(place.param.piece[1]):
        continue
      chunks = orbax_layout.choose_chunks(place.array_shape, itemsize, place.stacked_axes, chunk_split)
      array = arrays.setdefault(path, ArraySpec(path, place.array_shape, dtype, chunks))
      tasks.append(SliceTask(array=array, param=tuple(family.key(p) for p, _ in group), index=place.index,
                             sources=tuple(ref for _, ref in group), source_dtype=source_dtype))
      continue
    split = sources.split(place, source, itemsize, split_bytes)
    if split is None:
      chunks = orbax_layout.choose_chunks(place.array_shape, itemsize, place.stacked_axes, chunk_split)
      array = arrays.setdefault(path, ArraySpec(path, place.array_shape, dtype, chunks))
      tasks.append(SliceTask(array=array, param=key, index=place.index, sources=(source,), source_dtype=source_dtype))
      continue
    axis = place.free_axes[split.slice_axis]
    chunks = tuple(1 if a in place.stacked_axes else split.chunk if a == axis else n
                   for a, n in enumerate(place.array_shape))
    array = arrays.setdefault(path, ArraySpec(path, place.array_shape, dtype, chunks))
    for block in split.blocks():
      if block.positions[1] > block.positions[0]:
        ref, read = sources.block(source, split, block)
        tasks.append(SliceTask(array=array, param=key, index=place.index, sources=(ref,), block=read,
                               block_axis=axis, source_dtype=source_dtype))
  return tuple(arrays[k] for k in sorted(arrays)), tuple(tasks)


def check_save_dtype(save_dtype: str | None) -> None:
  if save_dtype is not None and save_dtype not in SAVE_DTYPES:
    raise ConversionError(f"--save_dtype={save_dtype} is not supported; use one of {list(SAVE_DTYPES)}")


def plan_to_maxtext(hf_model_path: str, scan_layers: bool = True, save_dtype: str | None = "bfloat16",
                    model_name: str | None = None, chunk_split: int = orbax_layout.DEFAULT_SPLIT,
                    use_multimodal: bool = False, vocab_size: int | None = None,
                    split_bytes: int = SPLIT_BYTES, source_view: Callable[..., dict[str, Any]] | None = None) -> Plan:
  """Plans HF -> MaxText from headers only; raises ConversionError on any mismatch.

  Tensors above `split_bytes` become several tasks, one per row block."""
  save_dtype = save_dtype or "bfloat16"
  check_save_dtype(save_dtype)
  config_path = storage.join(hf_model_path, "config.json")
  config = with_options(read_config(hf_model_path), use_multimodal, model_name, vocab_size)
  family = detect_family(config, model_name, config_path)
  sizes = family_sizes(family, config, config_path)
  tensors = logical_tensors(list_checkpoint(hf_model_path), config)
  if source_view is not None:
    tensors = source_view(family, config, tensors)
  return plan_tensors(family, config, sizes, tensors, hf_model_path, scan_layers, save_dtype, chunk_split,
                      split_bytes)


def plan_tensors(family: Family, config: dict[str, Any], sizes: dict[str, Any],
                 tensors: dict[str, TensorRef | QuantizedRef], model_dir: str, scan_layers: bool = True,
                 save_dtype: str = "bfloat16", chunk_split: int = orbax_layout.DEFAULT_SPLIT,
                 split_bytes: int = SPLIT_BYTES) -> Plan:
  """The plan of `family`'s placements read from HF `tensors` (header refs of the files in `model_dir`)."""
  save_dtype = save_dtype or "bfloat16"
  check_save_dtype(save_dtype)
  # MaxText's eager loading (the family's, or any use_multimodal=true conversion's): sources are cast
  # to the save dtype before any transform, so e.g. a float32 norm is rounded before its +1.
  cast = save_dtype if family.eager_load or config.get("use_multimodal") else None
  arrays, tasks = plan_slices(family, config, sizes, scan_layers, HfTensors(model_dir, tensors, sizes, save_dtype),
                              chunk_split, split_bytes, source_dtype=cast)
  used = {s.name for t in tasks for s in t.sources}
  ignored = [re.compile(p) for p in family.ignored]
  unused = sorted(n for n in tensors if n not in used and not any(p.fullmatch(n) for p in ignored))
  return Plan(family=family.name, sizes=sizes, scan_layers=scan_layers, save_dtype=save_dtype, arrays=arrays,
              tasks=tasks, unused=tuple(unused), source=model_dir)


def _source(place: Placement, tensors: dict[str, TensorRef | QuantizedRef], sizes: dict[str, Any],
            model_dir: str) -> TensorRef | QuantizedRef:
  name, param = place.hf_name, place.param
  ref = tensors.get(name)
  if ref is None:
    raise ConversionError(f"{model_dir}: tensor {name} is missing from the checkpoint; config.json says the "
                          f"model has it (re-download the shards or fix config.json)")
  expected = param.hf_shape(sizes)
  if tuple(ref.shape) != expected:
    raise ConversionError(f"{ref.file}: tensor {name} has shape {list(ref.shape)} but config.json implies "
                          f"{list(expected)} ({param.hf_axes}); the shards and config.json disagree")
  if ref.dtype not in SOURCE_DTYPES and ref.dtype != param.hf_dtype:
    raise ConversionError(f"{ref.file}: tensor {name} has dtype {ref.dtype}; only {sorted(SOURCE_DTYPES)} "
                          f"sources are supported")
  return ref

