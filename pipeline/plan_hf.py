"""The driver-side plan of MaxText -> HF: checkpoint metadata + HF config in, shards of tensors out.

Reads only `_METADATA`, `_CHECKPOINT_METADATA` and each parameter array's zarr metadata, in any of
MaxText's tree layouts (transforms/checkpoint_tree.py: Linen or NNX, TrainState or parameter-only). Shards are filled
in HF module order up to `max_shard_size`, exactly as transformers' save_pretrained splits a
state dict, and named as the Hub names them; within a file tensors follow the safetensors
package's order, so a shard can be written front to back, one tensor at a time.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from models.known_configs import known_config
from models.lora import base_family
from models.spec import Family
from transforms.errors import ConversionError
from pipeline.row_blocks import SPLIT_BYTES, RowBlock, Split, find_split
from pipeline.planner import (BUILT_IN, config_hint, detect_family, family_sizes, mt_shape, parse_size, placements,
                              read_config, with_options, without_options)
from transforms import manifest, quantized, storage
from transforms.orbax_layout import NUMPY_DTYPES
from transforms.lora import LoraFactors
from transforms.orbax_reader import CheckpointReader
from transforms.safetensors_io import DTYPES, HF_FILE_METADATA, INDEX_FILE, file_size, package_order

WEIGHT_DTYPES = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}
SINGLE_FILE = "model.safetensors"
SHARD_FILE = "model-{index:05d}-of-{count:05d}.safetensors"

@dataclasses.dataclass(frozen=True)
class TensorSource:
  """Where (part of) an HF tensor is in the checkpoint: `index` of `array`, made by the `param`-th Param."""
  param: int
  array: str
  index: tuple[tuple[int, int], ...]
  block_axis: int | None = None

  def window(self, block: RowBlock | None) -> tuple[int, int, int] | None:
    """The part of the slice that holds `block`'s rows (None: the whole slice)."""
    return None if block is None else (self.block_axis, *block.positions)


@dataclasses.dataclass(frozen=True)
class TensorTask:
  """One HF tensor: read its sources, undo their transforms, join parts, cast to `dtype`; a big one
  row block by row block (`split`), appended to the file in order.

  With `fp8_block`, the tensor is written as FP8 (`dtype` F8_E4M3) plus its float32 `<name>_scale_inv`,
  one scale per block, computed from the float32 value; its row blocks hold whole FP8 blocks.
  With `lora`, each row block is merged with its LoRA factors (transforms.lora) before that cast.
  """
  name: str
  dtype: str
  shape: tuple[int, ...]
  sources: tuple[TensorSource, ...]
  split: Split | None = None
  fp8_block: tuple[int, int] | None = None
  lora: LoraFactors | None = None

  @property
  def blocks(self) -> list[RowBlock | None]:
    """Its row blocks in file order (rows only MaxText has, its vocabulary padding, are not written)."""
    return [None] if self.split is None else [b for b in self.split.blocks() if b.rows[1] > b.rows[0]]

  def block_nbytes(self, block: RowBlock | None) -> int:
    """Bytes written for `block`'s rows (the whole tensor for None)."""
    if block is None or not self.shape:
      return self.nbytes
    return self.nbytes * (block.rows[1] - block.rows[0]) // max(self.shape[0], 1)

  @property
  def value_dtype(self) -> str:
    """The dtype the converted value is cast to before writing (FP8 quantizes from float32)."""
    return "F32" if self.fp8_block else self.dtype

  @property
  def outputs(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """(name, dtype, shape) of each tensor this task writes, in file order: the scales follow their weight."""
    if self.fp8_block is None:
      return ((self.name, self.dtype, self.shape),)
    return ((self.name, self.dtype, self.shape),
            (quantized.fp8_scale_name(self.name), "F32", quantized.fp8_scale_shape(self.shape, self.fp8_block)))

  @property
  def nbytes(self) -> int:
    return sum(math.prod(shape) * DTYPES[dtype].itemsize for _, dtype, shape in self.outputs)


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One output file and its tensors in file order; written front to back by one worker."""
  file: str
  tensors: tuple[TensorTask, ...]

  @property
  def size(self) -> int:
    return file_size([o for t in self.tensors for o in t.outputs], HF_FILE_METADATA)


@dataclasses.dataclass(frozen=True)
class HfPlan:
  family: str
  sizes: dict[str, Any]
  config: dict[str, Any]
  scan_layers: bool
  weight_dtype: str
  items: str
  output: str
  shards: tuple[ShardTask, ...]
  # What FinalizeFn writes `config` as, last: config.json, or a PEFT adapter's adapter_config.json.
  config_file: str = "config.json"

  @property
  def tensor_count(self) -> int:
    return sum(len(s.tensors) for s in self.shards)

  @property
  def total_size(self) -> int:
    return sum(t.nbytes for s in self.shards for t in s.tensors)

  def index(self) -> dict[str, Any] | None:
    """model.safetensors.index.json as transformers writes it, or None for a single file."""
    if len(self.shards) == 1:
      return None
    weight_map = {name: s.file.rsplit("/", 1)[-1] for s in self.shards for t in s.tensors for name, _, _ in t.outputs}
    total_parameters = sum(math.prod(shape) for s in self.shards for t in s.tensors for _, _, shape in t.outputs)
    return {"metadata": {"total_parameters": total_parameters, "total_size": self.total_size},
            "weight_map": dict(sorted(weight_map.items()))}


def target_config(hf_model_path: str | None, model_name: str | None,
                  items: str | None = None) -> tuple[dict[str, Any], str]:
  """The HF config to write, and where it came from: --hf_model_path, else the config.json recorded in
  the manifest ckptflow wrote beside the checkpoint `items`, else the known config of model_name."""
  if hf_model_path:
    return read_config(hf_model_path), storage.join(hf_model_path, "config.json")
  recorded = manifest.recorded_model(items) if items else None
  if recorded is not None:
    return recorded.config, recorded.where
  if not model_name:
    raise ConversionError("give --hf_model_path (a directory with config.json) or model_name=... of a "
                          "released model")
  config = known_config(model_name)
  if config is None:
    raise ConversionError(f"model_name={model_name} has no built-in config; pass --hf_model_path=DIR with its "
                          "config.json")
  return config, f"{BUILT_IN}{model_name}"


def default_weight_dtype(config: dict[str, Any]) -> str:
  dtype = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
  return dtype if dtype in WEIGHT_DTYPES else "bfloat16"


def plan_to_huggingface(items: str, output: str, config: dict[str, Any], where: str,
                        model_name: str | None = None, scan_layers: bool | None = None,
                        weight_dtype: str | None = None, max_shard_size: str | int = "5GB",
                        use_multimodal: bool = False, vocab_size: int | None = None,
                        split_bytes: int = SPLIT_BYTES, quantize_fp8_blocks: bool = False,
                        family: Family | None = None) -> HfPlan:
  """Plans MaxText -> HF from metadata only; raises ConversionError on any mismatch.

  Tensors above `split_bytes` are read and converted in row blocks. `family` (default: detected from
  `config`) is e.g. a LoRA family derived from the detected one."""
  out_config = dict(config)
  config = with_options(config, use_multimodal, model_name, vocab_size, "to_huggingface")
  family = family or detect_family(config, model_name, where)
  if family.hf_config is not None:
    out_config = without_options(family.hf_config(config))
    config = with_options(out_config, use_multimodal, model_name, vocab_size, "to_huggingface")
  sizes = family_sizes(family, config, where)
  weight_dtype = weight_dtype or default_weight_dtype(config)
  if weight_dtype not in WEIGHT_DTYPES:
    raise ConversionError(f"weight_dtype={weight_dtype} is not supported; use one of {list(WEIGHT_DTYPES)}")
  reader = CheckpointReader(items)
  tree = reader.tree
  if base_family(family) is not None:  # a derived LoRA family reads an adapter checkpoint
    tree = tree.adapters()
  tree.require_model(items)
  layout = tree.scan_layers
  if layout is None:
    raise ConversionError(f"{items}: no decoder layers in the checkpoint tree; is it a MaxText checkpoint?")
  if scan_layers is not None and scan_layers != layout:
    have = "scanned layers (scan_layers=true)" if layout else "unscanned layers (scan_layers=false)"
    raise ConversionError(f"{items} holds {have}; drop scan_layers= or set it to {str(layout).lower()}")

  code = WEIGHT_DTYPES[weight_dtype]
  by_name: dict[str, list[TensorSource]] = {}
  shapes: dict[str, tuple[int, ...]] = {}
  dtypes: dict[str, str] = {}
  splits: dict[str, Split | None] = {}
  places = placements(family, config, sizes, layout)
  stored = {p.model_path: tree.stored(p.model_path) for p in places}
  specs = reader.specs(sorted({a for a in stored.values() if a is not None}))
  for place in places:
    if place.param.fill is not None:  # MaxText's own constant: no HF tensor to write
      continue
    array = stored[place.model_path]
    if array is None:
      raise ConversionError(f"{items}: no array {tree.layout.stored(place.model_path)}, which a {family.name} model "
                            f"with this config has ({where}); wrong model_name or config?{config_hint(where)}")
    shape, stored_dtype = specs[array]
    if shape != place.array_shape:
      raise ConversionError(f"{items}: array {array} has shape {list(shape)} but {where} implies "
                            f"{list(place.array_shape)}{config_hint(where)}")
    split = splits.setdefault(place.hf_name, find_split(
        place.param, sizes, tuple(mt_shape(place.param, sizes)), DTYPES[code].itemsize,
        NUMPY_DTYPES.get(stored_dtype, NUMPY_DTYPES["float32"]).itemsize, split_bytes))
    axis = None if split is None else place.free_axes[split.slice_axis]
    by_name.setdefault(place.hf_name, []).append(TensorSource(family.key(place.param), array, place.index, axis))
    shapes[place.hf_name] = place.param.hf_shape(sizes)
    dtypes[place.hf_name] = place.param.hf_dtype or code
  tensors = [TensorTask(name, dtypes[name], shapes[name], tuple(sources), splits[name])
             for name, sources in by_name.items()]
  out_config["dtype" if "dtype" in out_config else "torch_dtype"] = weight_dtype
  # Weights are written as they are only; a source's quantization_config would misdescribe them.
  source_quantization = out_config.pop("quantization_config", None)
  if quantize_fp8_blocks:
    tensors, out_config["quantization_config"] = _fp8_blocks(tensors, family.name, source_quantization)
  return HfPlan(family=family.name, sizes=sizes, config=out_config, scan_layers=layout, weight_dtype=weight_dtype,
                items=items, output=output, shards=_shards(tensors, parse_size(max_shard_size), output))


def _fp8_blocks(tensors: list[TensorTask], family: str,
                source_quantization: dict[str, Any] | None) -> tuple[list[TensorTask], dict[str, Any]]:
  """The weights DeepSeek releases in FP8, as FP8 blocks; and the quantization_config that says so
  (the source's when it was FP8 blocks, with its block size, else DeepSeek-V3's)."""
  if not family.startswith("deepseek"):
    raise ConversionError(f"--quantize_fp8_blocks: only DeepSeek models are released with FP8 block weights, "
                          f"not {family}; drop the flag")
  if family == "deepseek4":
    raise ConversionError("--quantize_fp8_blocks writes DeepSeek-V3's format (F32 weight_scale_inv); DeepSeek V4's "
                          "release format (E8M0 scales, FP4 experts) is not written; drop the flag")
  config = dict(quantized.DEEPSEEK_FP8_CONFIG)
  if source_quantization and source_quantization.get("quant_method") == quantized.FP8:
    config = dict(source_quantization)
  block = tuple(config.get("weight_block_size") or quantized.FP8_BLOCK)
  return [dataclasses.replace(t, dtype="F8_E4M3", fp8_block=block, split=_aligned(t.split, block[0]))
          if quantized.DEEPSEEK_FP8_WEIGHTS.fullmatch(t.name)
          else t for t in tensors], config


def _aligned(split: Split | None, rows: int) -> Split | None:
  """`split` with blocks of a whole number of `rows`-row FP8 blocks, so each row block quantizes on its own."""
  if split is None:
    return None
  step = math.lcm(split.hf_rows_per_unit, rows) // split.hf_rows_per_unit
  return dataclasses.replace(split, units_per_block=max(step, split.units_per_block // step * step))


def _shards(tensors: list[TensorTask], max_bytes: int, output: str) -> tuple[ShardTask, ...]:
  """Greedy in module order, a tensor larger than the limit alone (huggingface_hub's rule)."""
  groups: list[list[TensorTask]] = []
  current: list[TensorTask] = []
  size = 0
  for t in tensors:
    if t.nbytes > max_bytes:
      groups.append([t])
      continue
    if current and size + t.nbytes > max_bytes:
      groups.append(current)
      current, size = [], 0
    current.append(t)
    size += t.nbytes
  if current:
    groups.append(current)
  names = ([SINGLE_FILE] if len(groups) == 1
           else [SHARD_FILE.format(index=i + 1, count=len(groups)) for i in range(len(groups))])
  shards = []
  for name, group in zip(names, groups):
    by_name = {t.name: t for t in group}
    ordered = package_order([(t.name, t.dtype) for t in group])
    shards.append(ShardTask(storage.join(output, name), tuple(by_name[n] for n in ordered)))
  return tuple(shards)


__all__ = ["HfPlan", "ShardTask", "TensorSource", "TensorTask", "plan_to_huggingface", "target_config", "INDEX_FILE"]
