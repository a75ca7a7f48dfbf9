"""LoRA conversions in MaxText's three modes, both directions, as plans of the ordinary pipelines.

to_maxtext, with `hf_lora_adapter_path=` (a PEFT directory):
  - alone: an adapter-only MaxText checkpoint (MaxText's layout: `.../kernel_lora_{a,b}/value`, at
    <base_output_directory>/<model_name>/<adapter name>/0/items) planned from the adapter's headers with
    the family's derived LoRA family (models.lora); rank, alpha and targets go in its metadata;
  - with `load_parameters_path=` (MaxText's switch for its merged mode) or `--merge_lora`: the base
    model from --hf_model_path with every adapted weight read as W + (alpha / r) B A (transforms.lora.MergedRef).
to_huggingface, with `lora.lora_restore_path=` (a MaxText adapter checkpoint):
  - alone: a PEFT adapter directory (adapter_model.safetensors, then adapter_config.json last);
  - with `load_parameters_path=`: the full HF model, each adapted weight merged block by block.
Rank and alpha come from the adapter (adapter_config.json, the checkpoint's shapes and metadata) and
`lora.lora_rank`/`lora.lora_alpha` must agree with it; nothing defaults to zero, and no LoRA option is
ever dropped in favour of converting the base model.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

import models
from models.known_configs import hub_repo, known_config
from models.lora import SUFFIX, factors as lora_factors_of, lora_family, module_name
from models.spec import Family
from pipeline import hub
from pipeline.options import ConversionOptions
from pipeline.plan_hf import HfPlan, ShardTask, plan_to_huggingface, target_config
from pipeline.planner import Plan, detect_family, family_sizes, placements, plan_tensors, read_config, with_options
from transforms import lora, orbax_layout, run_dirs, storage
from transforms.errors import ConversionError
from transforms.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RANK, TARGETS, AdapterConfig, MergedRef, ZeroRef
from transforms.orbax_reader import CheckpointReader
from transforms.safetensors_io import TensorRef, list_checkpoint, package_order
from transforms.tensor_ops import axes_shape

ADAPTER, MERGED = "adapter", "merged"


def is_adapter(family_name: str) -> bool:
  """Whether a plan's family is a derived LoRA family (its checkpoint is an adapter)."""
  return family_name.endswith(SUFFIX)
# A PEFT adapter is one file, however big (as PEFT writes it).
ONE_FILE = 2**62


def _agree(conv: ConversionOptions, rank: int, alpha: float | None, where: str) -> None:
  """lora.lora_rank / lora.lora_alpha, when given (MaxText's 0 = not given), must be the adapter's."""
  if conv.lora_rank and conv.lora_rank != rank:
    raise ConversionError(f"lora.lora_rank={conv.lora_rank} but {where} has rank {rank}; drop lora.lora_rank or fix it")
  if conv.lora_alpha and alpha is not None and conv.lora_alpha != alpha:
    raise ConversionError(f"lora.lora_alpha={conv.lora_alpha:g} but {where} has lora_alpha {alpha:g}; drop "
                          "lora.lora_alpha or fix it")


# ---------------------------------------------------------------- HF -> MaxText


def to_maxtext_mode(conv: ConversionOptions) -> str | None:
  """ADAPTER, MERGED, or None for a plain conversion; LoRA options this command cannot honour are errors."""
  if conv.lora_restore_path:
    raise ConversionError("lora.lora_restore_path= is to_huggingface's (a MaxText adapter checkpoint); to_maxtext "
                          "takes hf_lora_adapter_path= (a PEFT adapter directory)")
  if conv.hf_lora_adapter_path:
    return MERGED if conv.merge_lora or conv.load_parameters_path else ADAPTER
  # Without an adapter, load_parameters_path= is a MaxText checkpoint to convert (pipeline/to_maxtext_job.py).
  for given, what in ((conv.merge_lora, "--merge_lora"), (conv.lora_rank, "lora.lora_rank"),
                      (conv.lora_alpha, "lora.lora_alpha")):
    if given:
      raise ConversionError(f"{what} given without hf_lora_adapter_path=: there is no adapter to apply it to; give "
                            "hf_lora_adapter_path=<PEFT adapter directory> or drop it")
  return None


@functools.lru_cache(maxsize=None)
def _adapter_dir(path: str) -> str:
  """A local or gs:// directory as given, a Hub repo as hf://org/repo@<commit> (resolved once)."""
  return hub.resolve_source(path, None, None, "--hf_lora_adapter_path")


def adapter_location(conv: ConversionOptions) -> str | None:
  """Where hf_lora_adapter_path= is read from (None without one)."""
  return _adapter_dir(conv.hf_lora_adapter_path) if conv.hf_lora_adapter_path else None


def adapter_tensors(adapter_dir: str, config: AdapterConfig) -> dict[str, TensorRef]:
  """The adapter's factor tensors by PEFT name, checked: only lora_A/lora_B, in pairs, of rank r."""
  tensors = list_checkpoint(adapter_dir)
  odd = sorted(n for n in tensors if lora.base_name(n) is None)
  if odd:
    raise ConversionError(f"{adapter_dir}: {len(odd)} tensors are not LoRA factors (lora_A/lora_B), e.g. {odd[0]}; "
                          "ckptflow converts plain LoRA adapters")
  for name, ref in tensors.items():
    hf, factor = lora.base_name(name)
    other = lora.peft_name(hf, "B" if factor == "A" else "A")
    if other not in tensors:
      raise ConversionError(f"{ref.file}: {name} has no {other}; the adapter is incomplete")
    rank_axis = 0 if factor == "A" else 1
    if len(ref.shape) != 2 or ref.shape[rank_axis] != config.r:
      raise ConversionError(f"{ref.file}: {name} has shape {list(ref.shape)}, not rank r={config.r} "
                            f"({config.path}); the adapter and its config disagree")
  return tensors


def _template_pattern(template: str) -> re.Pattern:
  return re.compile(re.escape(template).replace(re.escape("{layer}"), r"\d+"))


def _targets(family: Family, tensors: dict[str, TensorRef], where: str) -> tuple[str, ...]:
  """The HF name templates of the base parameters the adapter adapts; a factor no parameter takes is an error."""
  templates = {f.base.hf: _template_pattern(f.base.hf) for f in map(lora_factors_of, family.params) if f}
  found, stray = set(), []
  for name in tensors:
    hf = lora.base_name(name)[0]
    matched = [t for t, pattern in templates.items() if pattern.fullmatch(hf)]
    found.update(matched)
    if not matched:
      stray.append(name)
  if stray:
    raise ConversionError(f"{where}: {len(stray)} adapter tensors adapt weights that MaxText's LoRA of a {family.name} "
                          f"model has no place for (it covers the attention and MLP projections), e.g. {sorted(stray)[0]}")
  return tuple(sorted(found))


def base_config(conv: ConversionOptions) -> tuple[dict[str, Any], str]:
  """The base model's config.json (from --hf_model_path, else model_name's built-in one) and where it came from."""
  if conv.hf_model_path:
    path = hub.resolve_source(conv.hf_model_path, None, conv.revision)
    return read_config(path), storage.join(path, "config.json")
  config = known_config(conv.model_name) if conv.model_name else None
  if config is None:
    raise ConversionError("the adapter's base model is needed for its shapes: give --hf_model_path=<base model "
                          "directory or Hub repo> (only config.json is read) or model_name= of a released model")
  return config, f"the built-in config of {conv.model_name}"


def plan_adapter_to_maxtext(conv: ConversionOptions, split_bytes: int) -> Plan:
  """The adapter-only checkpoint: the derived LoRA family planned from the adapter's own tensors."""
  adapter_dir = _adapter_dir(conv.hf_lora_adapter_path)
  config_file = lora.read_adapter_config(adapter_dir)
  _agree(conv, config_file.r, config_file.alpha, config_file.path)
  if config_file.use_rslora:
    raise ConversionError(f"{config_file.path}: use_rslora=true scales by alpha/sqrt(r), which a MaxText adapter "
                          "cannot say (MaxText scales by alpha/r); merge it instead (--merge_lora)")
  config, where = base_config(conv)
  config = with_options(config, conv.use_multimodal, conv.model_name, conv.vocab_size)
  family = detect_family(config, conv.model_name, where)
  derived = lora_family(family)
  if derived is None:
    raise ConversionError(f"{family.name} has no LoRA-able weights ckptflow knows")
  tensors: dict[str, Any] = adapter_tensors(adapter_dir, config_file)
  config = {**config, RANK: config_file.r, TARGETS: _targets(family, tensors, adapter_dir)}
  sizes = family_sizes(derived, config, where)
  weights = storage.join(adapter_dir, ADAPTER_WEIGHTS)
  dtype = next(iter(tensors.values())).dtype
  for place in placements(derived, config, sizes, conv.scan_layers is not False):
    if place.hf_name not in tensors:  # a layer outside PEFT's layers_to_transform: its delta is zero
      tensors[place.hf_name] = ZeroRef(place.hf_name, axes_shape(place.param.hf_axes, sizes), dtype, weights)
  plan = plan_tensors(derived, config, sizes, tensors, adapter_dir, conv.scan_layers is not False, conv.save_dtype,
                      conv.simulated_cpu_devices_count, split_bytes)
  if plan.unused:
    raise ConversionError(f"{adapter_dir}: {len(plan.unused)} adapter tensors have no place in a {family.name} model "
                          f"with this config ({where}), e.g. {plan.unused[0]}")
  return plan


@dataclasses.dataclass(frozen=True)
class AdapterOutput:
  """Where an adapter-only checkpoint goes, what its metadata says, and the config files it was made from."""
  base_directory: str
  custom_metadata: str
  config_files: tuple[str, ...]


def adapter_output(conv: ConversionOptions, plan: Plan) -> AdapterOutput:
  """MaxText's place for it (<out>/<model_name>/<adapter name>, <out>/<adapter name> without model_name) and the
  _CHECKPOINT_METADATA MaxText's to_huggingface reads (`lora`: rank, alpha, target modules as its regex)."""
  adapter_dir = _adapter_dir(conv.hf_lora_adapter_path)
  config = lora.read_adapter_config(adapter_dir)
  name = re.sub(r"@.*$", "", conv.hf_lora_adapter_path.rstrip("/")).rsplit("/", 1)[-1]
  parts = [conv.model_name, name] if conv.model_name else [name]
  params = {p.hf: p for p in _params_of(plan)}
  modules = sorted({p.mt.split("{layers}/", 1)[-1].removesuffix("/kernel_lora_a/value") for p in params.values()
                    if p.mt.endswith("kernel_lora_a/value")})
  targets = sorted({module_name(hf.removeprefix(lora.PEFT_PREFIX).replace(".lora_A", "").replace(".lora_B", ""))
                    for hf in params})
  metadata = {
      "lora": {"enable_lora": False, "lora_rank": config.r, "lora_alpha": config.alpha,
               "lora_module_path": "decoder/.*(" + "|".join(modules) + ")", "lora_weight_qtype": None,
               "lora_tile_size": None, "lora_restore_path": ""},
      "hf_lora_adapter": {"target_modules": targets, "adapter_config": config.config},
  }
  files = [config.path]
  if conv.hf_model_path:
    files.append(storage.join(hub.resolve_source(conv.hf_model_path, None, conv.revision), "config.json"))
  return AdapterOutput(storage.join(conv.base_output_directory, *parts), json.dumps(metadata), tuple(files))


def _params_of(plan: Plan) -> list[Any]:
  family = models.BY_NAME[plan.family]
  return [family.param(t.param) for t in plan.tasks]


def merged_view(conv: ConversionOptions):
  """The source_view of a merged conversion (None without one): adapted weights become MergedRefs."""
  if to_maxtext_mode(conv) != MERGED:
    return None
  adapter_dir = _adapter_dir(conv.hf_lora_adapter_path)
  config = lora.read_adapter_config(adapter_dir)
  _agree(conv, config.r, config.alpha, config.path)
  factors = adapter_tensors(adapter_dir, config)

  def view(family: Family, model_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    out = dict(tensors)
    for name, ref in sorted(factors.items()):
      hf, factor = lora.base_name(name)
      if factor != "A":
        continue
      base, b = tensors.get(hf), factors[lora.peft_name(hf, "B")]
      if base is None:
        raise ConversionError(f"{ref.file}: {name} adapts {hf}, which the base model has not; is it the adapter of "
                              f"another model?")
      if len(base.shape) != 2 or tuple(base.shape) != (b.shape[0], ref.shape[1]):
        raise ConversionError(f"{ref.file}: {name} {list(ref.shape)} and its lora_B {list(b.shape)} do not fit "
                              f"{hf} {list(base.shape)}; is it the adapter of another model?")
      out[hf] = MergedRef(base, ref, b, config.scaling, config.path)
    return out
  return view


# ---------------------------------------------------------------- MaxText -> HF


def to_huggingface_mode(conv: ConversionOptions) -> str | None:
  if conv.hf_lora_adapter_path or conv.merge_lora:
    raise ConversionError("hf_lora_adapter_path= and --merge_lora are to_maxtext's (a PEFT adapter in); "
                          "to_huggingface takes lora.lora_restore_path= (a MaxText adapter checkpoint)")
  if conv.lora_restore_path:
    return MERGED if conv.load_parameters_path else ADAPTER
  for given, what in ((conv.lora_rank, "lora.lora_rank"), (conv.lora_alpha, "lora.lora_alpha")):
    if given:
      raise ConversionError(f"{what} given without lora.lora_restore_path=: there is no adapter to apply it to")
  return None


def _lora_arrays(paths: list[str]) -> list[str]:
  return [p for p in paths if re.search(r"_lora_[ab](/value)?$", p)]


def _alpha(conv: ConversionOptions, items: str, recorded: dict[str, Any]) -> float:
  """lora_alpha from the checkpoint's metadata or lora.lora_alpha (they must agree); never a silent zero."""
  meta_alpha = recorded.get("lora_alpha") or None
  if meta_alpha and conv.lora_alpha and float(meta_alpha) != conv.lora_alpha:
    raise ConversionError(f"lora.lora_alpha={conv.lora_alpha:g} but {items} records lora_alpha {float(meta_alpha):g}; "
                          "drop lora.lora_alpha or fix it")
  alpha = meta_alpha or conv.lora_alpha
  if not alpha:
    raise ConversionError(f"{items} does not record the adapter's lora_alpha (MaxText writes it only when given "
                          "lora.lora_rank/lora.lora_alpha); pass lora.lora_alpha=<the alpha it was trained with>")
  return float(alpha)


def _peft_config(recorded: dict[str, Any], rank: int, alpha: float, targets: list[str], base: str) -> dict[str, Any]:
  """adapter_config.json: the one the adapter came in with (when ckptflow made the checkpoint), else PEFT's
  defaults for plain LoRA; with the real r, lora_alpha, target_modules and the base the user names."""
  config = dict(recorded.get("adapter_config") or {
      "alpha_pattern": {}, "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
      "layers_pattern": None, "layers_to_transform": None, "lora_dropout": 0.0, "modules_to_save": None,
      "peft_type": "LORA", "rank_pattern": {}, "revision": None, "task_type": "CAUSAL_LM", "use_dora": False,
      "use_rslora": False})
  # Every layer's factors are written (zeros where the source had none), so no layer filter is kept.
  config.update({"base_model_name_or_path": base, "r": rank, "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
                 "target_modules": targets, "layers_to_transform": None, "layers_pattern": None})
  return config


def base_model_name(conv: ConversionOptions) -> str:
  """The base as the user names it: --hf_model_path as given (a Hub repo without hf://), else model_name's Hub repo."""
  if conv.hf_model_path:
    name = conv.hf_model_path.rstrip("/")
    return re.sub(r"@.*$", "", name.removeprefix(hub.PREFIX)) if hub.is_hub(name) else name
  return hub_repo(conv.model_name) or conv.model_name or ""


def plan_adapter_to_huggingface(conv: ConversionOptions, output: str, hf_model_path: str | None,
                                split_bytes: int) -> HfPlan:
  """A PEFT adapter directory from a MaxText adapter checkpoint: the derived family's tensors, in one file."""
  items = run_dirs.resolve(conv.lora_restore_path, None, "lora.lora_restore_path")
  config, where = target_config(hf_model_path, conv.model_name)
  config = with_options(config, conv.use_multimodal, conv.model_name, conv.vocab_size)
  family = detect_family(config, conv.model_name, where)
  derived = lora_family(family)
  if derived is None:
    raise ConversionError(f"{family.name} has no LoRA-able weights ckptflow knows")
  reader = CheckpointReader(items)
  present = set(reader.paths)
  found = _lora_arrays(sorted(present))
  if not found:
    raise ConversionError(f"{items}: no LoRA arrays (.../kernel_lora_a/value); is it a MaxText LoRA adapter "
                          "checkpoint? (a full model goes in load_parameters_path=)")
  layout = reader.scan_layers()
  if layout is None:
    raise ConversionError(f"{items}: no decoder layers in the adapter tree; is it a MaxText LoRA adapter checkpoint?")
  probe = {**config, RANK: 1, TARGETS: tuple(f.base.hf for f in map(lora_factors_of, family.params) if f)}
  probe_sizes = family_sizes(derived, probe, where)
  places = placements(derived, probe, probe_sizes, layout)
  targets = tuple(sorted({_adapted_template(p.param) for p in places if p.array_path in present}))
  stray = sorted(set(found) - {p.array_path for p in places})
  if stray:
    raise ConversionError(f"{items}: LoRA arrays a {family.name} model has no kernel for, e.g. {stray[0]}; wrong "
                          f"model (config: {where})?")
  rank = reader.spec(found[0])[0][-1 if found[0].endswith(("lora_a", "lora_a/value")) else 0]
  recorded = _metadata(items)
  meta_rank = recorded.get("lora", {}).get("lora_rank") or None
  if meta_rank and meta_rank != rank:
    raise ConversionError(f"{items}: its metadata says lora_rank {meta_rank} but its arrays have rank {rank}; the "
                          "checkpoint is inconsistent")
  _agree(conv, rank, None, items)
  alpha = _alpha(conv, items, recorded.get("lora", {}))
  config = {**config, RANK: rank, TARGETS: targets}
  plan = plan_to_huggingface(items, output, config, where, conv.model_name, conv.scan_layers,
                             conv.weight_dtype or "float32", ONE_FILE, conv.use_multimodal, conv.vocab_size,
                             split_bytes, family=derived)
  tasks = {t.name: t for shard in plan.shards for t in shard.tensors}
  ordered = package_order([(t.name, t.dtype) for t in tasks.values()])
  shard = ShardTask(storage.join(output, ADAPTER_WEIGHTS), tuple(tasks[n] for n in ordered))
  modules = sorted({module_name(t) for t in targets})
  peft = _peft_config(recorded.get("hf_lora_adapter", {}), rank, alpha, modules, base_model_name(conv))
  return dataclasses.replace(plan, shards=(shard,), config=peft, config_file=ADAPTER_CONFIG)


def _adapted_template(param: Any) -> str:
  """The base HF name template a derived factor parameter adapts."""
  return param.hf.removeprefix(lora.PEFT_PREFIX).replace(".lora_A.weight", ".weight").replace(".lora_B.weight",
                                                                                           ".weight")


def _metadata(items: str) -> dict[str, Any]:
  path = storage.join(storage.parent(items), orbax_layout.CHECKPOINT_METADATA)
  if not storage.exists(path):
    return {}
  try:
    return json.loads(storage.read_text(path)).get("custom_metadata") or {}
  except (json.JSONDecodeError, AttributeError):
    return {}


def merge_into(plan: HfPlan, conv: ConversionOptions, hf_model_path: str | None, split_bytes: int) -> HfPlan:
  """`plan` (the base model's) with each adapted tensor merged with its factors from lora.lora_restore_path."""
  adapter = plan_adapter_to_huggingface(conv, plan.output, hf_model_path, split_bytes)
  derived = models.BY_NAME[adapter.family]
  factors = {t.name: t for t in adapter.shards[0].tensors}
  scale = adapter.config["lora_alpha"] / adapter.config["r"]
  sizes = lora.as_sizes(adapter.sizes)
  items = adapter.items
  used = set()
  shards = []
  for shard in plan.shards:
    tensors = []
    for task in shard.tensors:
      a, b = factors.get(lora.peft_name(task.name, "A")), factors.get(lora.peft_name(task.name, "B"))
      if a is not None and b is not None:
        (sa,), (sb,) = a.sources, b.sources
        task = dataclasses.replace(task, lora=lora.LoraFactors(items, sa.array, sa.index, sb.array, sb.index,
                                                               derived.param(sa.param), derived.param(sb.param), sizes,
                                                               scale))
        used.update((a.name, b.name))
      tensors.append(task)
    shards.append(dataclasses.replace(shard, tensors=tuple(tensors)))
  missing = sorted(set(factors) - used)
  if missing:
    raise ConversionError(f"{items}: {len(missing)} LoRA factors adapt weights the base model does not have, e.g. "
                          f"{missing[0]}")
  return dataclasses.replace(plan, shards=tuple(shards))

