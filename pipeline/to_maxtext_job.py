"""HF safetensors or a MaxText checkpoint -> a MaxText Orbax checkpoint, as a Beam pipeline.

  python -m pipeline.to_maxtext model_name=llama3.1-8b base_output_directory=gs://b/out \\
      scan_layers=True --hf_model_path=/data/Llama-3.1-8B --save_dtype=bfloat16
  python -m pipeline.to_maxtext model_name=llama3.1-8b base_output_directory=gs://b/decode \\
      load_full_state_path=gs://b/run/checkpoints/2000/items force_unroll=true

writes <base_output_directory>/0/items, which MaxText loads with load_parameters_path=.../0/items.
A MaxText source (load_parameters_path= parameters, load_full_state_path= a training state, whose
optimizer state is never read) is re-laid out (scan_layers=, force_unroll=true), re-typed
(--save_dtype) or re-stored (--checkpoint_storage_use_ocdbt/_zarr3) slice by slice; --hf_model_path
then only gives config.json, or model_name= a released model's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, destination, hub, lora, outputs, preflight, runner, usage
from pipeline.build import add_to_maxtext
from transforms.errors import ConversionError
from pipeline.options import MAXTEXT_COMPATIBILITY, ConversionOptions, is_dry_run
from pipeline.plan_hf import target_config
from pipeline.plan_maxtext import plan_from_maxtext
from pipeline.planner import SAVE_DTYPES, Plan, parse_size, plan_to_maxtext
from transforms import hub_io, manifest, orbax_layout, orbax_writer, storage
from transforms.orbax_writer import CheckpointTarget

MAXTEXT_KEYS = usage.KEYS["to_maxtext"]
# Every ConversionOptions field this command reads; its flex template's parameters are these minus
# template_metadata.NOT_TEMPLATE_PARAMETERS.
OPTIONS = ("hf_model_path", "base_output_directory", "model_name", "scan_layers", "save_dtype",
           "checkpoint_storage_use_zarr3", "checkpoint_storage_use_ocdbt", "simulated_cpu_devices_count",
           "use_multimodal", "vocab_size", "zstd_level", "max_element_size", "hf_access_token", "revision",
           "hf_cache_dir", "workers", "worker_mbps", "overwrite", "resume", "progress", "wait", "verbose",
           "hf_lora_adapter_path", "merge_lora", "load_parameters_path", "lora_rank", "lora_alpha",
           "load_full_state_path", "force_unroll", "weight_dtype")
REQUIRED = ("base_output_directory",)
# Step 0, as MaxText's CheckpointManager numbers it.
STEP = "0"


def prepare_output(base_output_directory: str, overwrite: bool, resume: bool = False) -> str:
  """The step directory to write; refuses to touch an existing one unless `overwrite` or `resume`."""
  step_dir = storage.join(base_output_directory, STEP)
  if storage.exists(step_dir):
    committed = storage.exists(storage.join(step_dir, orbax_layout.COMMIT_MARKER))
    if resume and not committed:
      return step_dir
    if not overwrite:
      what = "a checkpoint" if committed else "an incomplete checkpoint from an earlier run (no commit_success.txt)"
      hint = "pass --overwrite to replace it" + ("" if committed else ", or --resume to finish it")
      raise ConversionError(f"{step_dir} already holds {what}; {hint}")
    storage.remove_tree(step_dir)
  storage.check_writable(base_output_directory)
  return step_dir


def build_manifest(plan: Plan, conv: ConversionOptions, source: str | None = None,
                   config_files: tuple[str, ...] | None = None) -> dict:
  """The provenance written beside the checkpoint (ckptflow_manifest.json), before the markers.

  Options are listed by name (never hf_access_token); a Hub source is recorded as
  hf://org/repo@<commit>, and any credentials in a URL are masked. `config_files` are the configs
  the plan was made from (default: the config.json beside the source shards). A MaxText source is
  fingerprinted by its metadata, markers and OCDBT root, which change whenever it is saved again.
  The HF model's config.json and generation_config.json travel in it, with where its tokenizer files
  are, so that MaxText -> HF of the result needs no --hf_model_path.
  """
  options = {k: getattr(conv, k) for k in ("hf_model_path", "model_name", "scan_layers", "save_dtype",
                                            "checkpoint_storage_use_zarr3", "checkpoint_storage_use_ocdbt",
                                            "simulated_cpu_devices_count", "zstd_level", "use_multimodal",
                                            "vocab_size", "max_element_size", "resume", "revision",
                                            "hf_lora_adapter_path", "merge_lora", "load_parameters_path",
                                            "lora_rank", "lora_alpha", "load_full_state_path", "force_unroll",
                                            "weight_dtype")}
  sources = [ref for task in plan.tasks for ref in task.sources]
  checkpoint = maxtext_source(conv)
  if checkpoint is not None:
    config = config_source(conv)
    files = manifest.orbax_source_files(checkpoint[0]) + ([storage.join(config, "config.json")] if config else [])
    built = manifest.build("to_maxtext", plan.family, options, files, (ref.name for ref in sources), checkpoint[0])
    return manifest.with_model(built, *maxtext_source_model(conv, checkpoint[0]))
  # The shards, and the config.json beside them (it decides shapes and transforms); a quantized
  # source's scales may sit in another shard, a merged LoRA's factors and adapter_config.json in the adapter.
  shards = [f for ref in sources for f in getattr(ref, "files", (ref.file,))]
  model_dir = storage.parent(sources[0].file)
  files = [*(config_files or (storage.join(model_dir, "config.json"),)), *shards]
  built = manifest.build("to_maxtext", plan.family, options, files, (ref.name for ref in sources),
                         source or conv.hf_model_path)
  if config_files:  # an adapter: its way back is to an adapter, which has no config.json of its own
    return built
  return manifest.with_model(built, manifest.model_files(model_dir), model_dir)


def maxtext_source_model(conv: ConversionOptions, items: str) -> tuple[dict[str, str], str | None]:
  """The HF model files of a MaxText source, from where its plan's config came: --hf_model_path, else the
  source's own manifest, else model_name's built-in config (no tokenizer then)."""
  config = config_source(conv)
  if config:
    return manifest.model_files(config), config
  recorded = manifest.recorded_model(items)
  if recorded is not None:
    return recorded.files, recorded.tokenizer_from
  known, _ = target_config(None, conv.model_name)
  return {"config.json": json.dumps(known, indent=2, sort_keys=True) + "\n"}, None


def model_source(conv: ConversionOptions) -> str:
  """Where the HF model is read from: a local or gs:// directory, or hf://org/repo@<commit>."""
  source = hub.resolve_source(conv.hf_model_path, conv.model_name, conv.revision)
  if not source:
    raise ConversionError("--hf_model_path is required: a local or gs:// directory with config.json and "
                          "*.safetensors, or a Hub repo (org/repo), or a model_name with a known Hub repo")
  return source


def maxtext_source(conv: ConversionOptions) -> tuple[str, bool] | None:
  """(items, is a training state) of a MaxText source, or None when the source is an HF model.

  With hf_lora_adapter_path=, load_parameters_path= is MaxText's switch for its merged LoRA mode (the
  base is the HF model; see pipeline/lora.py), not a source.
  """
  if conv.hf_lora_adapter_path and not conv.load_full_state_path:
    return None
  if conv.load_parameters_path and conv.load_full_state_path:
    raise ConversionError("give load_parameters_path= (parameters) or load_full_state_path= (a training state), "
                          "not both")
  if conv.load_full_state_path:
    return conv.load_full_state_path, True
  return (conv.load_parameters_path, False) if conv.load_parameters_path else None


def config_source(conv: ConversionOptions) -> str | None:
  """With a MaxText source, where config.json comes from: --hf_model_path (no weights needed), maybe on the Hub."""
  return conv.hf_model_path and hub.resolve_source(conv.hf_model_path, None, conv.revision)


def target_scan_layers(conv: ConversionOptions, default: bool | None) -> bool | None:
  """MaxText's force_unroll=true unrolls whatever scan_layers= says; else scan_layers=, else `default`."""
  if conv.force_unroll:
    return False
  return default if conv.scan_layers is None else conv.scan_layers


def maxtext_save_dtype(conv: ConversionOptions) -> str | None:
  """--save_dtype, else (parameters only) weight_dtype= as reshard_checkpoint reads it, else None: as stored."""
  if conv.save_dtype or not conv.load_parameters_path or not conv.weight_dtype:
    return conv.save_dtype
  if conv.weight_dtype not in SAVE_DTYPES:
    raise ConversionError(f"weight_dtype={conv.weight_dtype}: a MaxText checkpoint is saved as one of "
                          f"{list(SAVE_DTYPES)}")
  return conv.weight_dtype


def plan_from_options(conv: ConversionOptions, source: str | None = None) -> Plan:
  split_bytes = parse_size(conv.max_element_size, "--max_element_size")
  if lora.to_maxtext_mode(conv) == lora.ADAPTER:
    return lora.plan_adapter_to_maxtext(conv, split_bytes)
  checkpoint = maxtext_source(conv)
  if checkpoint is not None:
    items, full_state = checkpoint
    config, where = target_config(config_source(conv), conv.model_name, items)
    return plan_from_maxtext(items, config, where, conv.model_name, target_scan_layers(conv, None),
                             maxtext_save_dtype(conv), conv.simulated_cpu_devices_count, conv.use_multimodal,
                             conv.vocab_size, split_bytes, full_state)
  if conv.weight_dtype:
    print(f"note: weight_dtype={conv.weight_dtype} sets the dtype of a MaxText source (as reshard_checkpoint's); "
          "an HF source is saved as --save_dtype", file=sys.stderr)
  return plan_to_maxtext(source or model_source(conv), target_scan_layers(conv, True), conv.save_dtype,
                         conv.model_name, conv.simulated_cpu_devices_count, conv.use_multimodal, conv.vocab_size,
                         split_bytes, lora.merged_view(conv))


def refuse_overlap(items: str, base_output_directory: str) -> None:
  """A conversion never writes into its own source: not the same step, not inside it, not around it."""
  source_step, target_step = storage.parent(items), storage.join(base_output_directory, STEP)

  def norm(path: str) -> str:
    return os.path.realpath(path) if storage.is_local(path) else path.rstrip("/")
  a, b = norm(source_step), norm(target_step)
  if a == b:
    raise ConversionError(f"base_output_directory={base_output_directory} would write {target_step}, the checkpoint "
                          f"being read ({items}); choose another base_output_directory")
  if b.startswith(a + "/") or a.startswith(b + "/"):
    where = "inside" if b.startswith(a + "/") else "around"
    raise ConversionError(f"base_output_directory={base_output_directory} would write {target_step} {where} the "
                          f"checkpoint being read ({source_step}); choose a directory outside it")


def lock_options(conv: ConversionOptions) -> dict:
  """What the writer lock records about this run, so a run it stops can say what is being written."""
  recorded = {k: hub_io.redact(getattr(conv, k)) if isinstance(getattr(conv, k), str) else getattr(conv, k)
              for k in ("hf_model_path", "model_name", "scan_layers", "save_dtype", "resume", "overwrite")}
  if maxtext_source(conv) is None:  # from HF the saved dtype defaults to bfloat16; from MaxText it is the source's
    recorded["save_dtype"] = conv.save_dtype or "bfloat16"
  return recorded


def convert(options: PipelineOptions, flags: Sequence[str] = (), take_over: bool | None = None
            ) -> tuple[Plan, str, dict[str, int]]:
  """Plans, writes and commits; returns the plan, the items path and the run's counters.

  With --resume, slices whose chunks an interrupted run already stored are not written again.
  The destination is held exclusively for the run (pipeline/destination.py); `take_over` (default:
  --resume or --overwrite) lets it replace the lock of a run that died.
  """
  conv = options.view_as(ConversionOptions)
  if not conv.base_output_directory:
    raise ConversionError("base_output_directory=... is required")
  if hub.is_hub(conv.base_output_directory):
    raise ConversionError(f"base_output_directory={conv.base_output_directory}: a MaxText checkpoint goes to a local "
                          "or gs:// directory; hf:// destinations are for to_huggingface")
  access = hub.access(conv.hf_access_token, conv.hf_cache_dir)
  checkpoint = maxtext_source(conv)
  adapter_only = lora.to_maxtext_mode(conv) == lora.ADAPTER
  if checkpoint is not None:
    source = checkpoint[0]
    refuse_overlap(source, conv.base_output_directory)
    runner.check_dataflow(options, {"load_full_state_path" if checkpoint[1] else "load_parameters_path": source,
                                    "base_output_directory": conv.base_output_directory,
                                    "hf_model_path": config_source(conv)})
  else:
    source = lora.adapter_location(conv) if adapter_only else model_source(conv)
    runner.check_dataflow(options, {"hf_model_path": source, "base_output_directory": conv.base_output_directory,
                                    "hf_lora_adapter_path": lora.adapter_location(conv)})
  take_over = conv.resume or conv.overwrite if take_over is None else take_over
  remote = None if runner.is_local(options) else runner.runner_name(options)
  with destination.claim(conv.base_output_directory, "to_maxtext", lock_options(conv), take_over,
                         remote=remote) as claim:
    plan = plan_from_options(conv, None if adapter_only else source)
    adapter = lora.adapter_output(conv, plan) if adapter_only else None
    base = adapter.base_directory if adapter else conv.base_output_directory
    target = CheckpointTarget(storage.join(base, STEP), use_ocdbt=conv.checkpoint_storage_use_ocdbt,
                              use_zarr3=conv.checkpoint_storage_use_zarr3, zstd_level=conv.zstd_level,
                              custom_metadata=adapter.custom_metadata if adapter else "", with_step=plan.tree.step)
    slices = [(t.array, t.index, t.window) for t in plan.tasks]
    output = outputs.MaxTextOutput(target, slices)
    existed = storage.exists(target.step_dir)
    todo = plan
    if conv.resume and existed:
      done = orbax_writer.finished(target, slices)
      todo = dataclasses.replace(plan, tasks=tuple(t for t, d in zip(plan.tasks, done) if not d))
    reclaimed = destination.local_bytes(target.step_dir) if existed and conv.overwrite and not conv.resume else 0
    destination.check_space([*outputs.maxtext_needs(base, todo.tasks, target, reclaimed),
                             *outputs.hub_cache_needs(conv.hf_cache_dir, source, todo.source_bytes)])
    prepare_output(base, conv.overwrite, conv.resume)
    output.sweep()  # only now: a checkpoint we were refused may be another program's, still being written
    output.fresh = not (conv.resume and existed)
    if conv.resume and existed:
      print(f"resuming {target.items}: {len(plan.tasks) - len(todo.tasks)} of {len(plan.tasks)} slices already stored",
            file=sys.stderr)
    provenance = build_manifest(plan, conv, source, adapter.config_files if adapter else None)
    run_options = runner.with_local_defaults(options, flags)
    with destination.guarded(output, conv.resume):
      totals = runner.run(lambda p, progress: add_to_maxtext(p, todo, target, progress, provenance, access,
                                                             lock=claim.held),
                          run_options, len(todo.tasks), "to_maxtext", conv.progress, unit="slices",
                          total_bytes=todo.source_bytes)
    if not runner.waits(run_options):
      claim.hand_over()  # the job's commit step releases the lock
  return plan, target.items, totals


def main(argv: list[str]) -> int:
  flags = cli.start(argv, "python -m pipeline.to_maxtext", __doc__, MAXTEXT_KEYS, "to_maxtext",
                    OPTIONS + MAXTEXT_COMPATIBILITY)
  if flags is None:
    return 0
  options = PipelineOptions(flags)
  if is_dry_run(options):
    conv = options.view_as(ConversionOptions)
    preflight.print_report(preflight.to_maxtext_preflight(plan_from_options(conv)), conv)
    return 0
  start = time.monotonic()
  plan, items, totals = convert(options, flags)
  if plan.unused:
    shown = ", ".join(plan.unused[:8]) + (f", ... ({len(plan.unused) - 8} more)" if len(plan.unused) > 8 else "")
    what = "arrays" if maxtext_source(options.view_as(ConversionOptions)) else "tensors"
    print(f"ignored: {len(plan.unused)} {what} a MaxText {plan.family} model does not use: {shown}", file=sys.stderr)
  if not runner.waits(options):
    print(f"the job writes {items} and commits it when every slice is written (load_parameters_path={items})")
    return 0
  copied = totals.get("slices-copied-as-stored")
  note = f" ({copied} of {runner.plural(len(plan.tasks), 'slice')} copied as stored)" if copied else ""
  stored = storage.stored_bytes(storage.parent(items))
  print(f"{plan.family}: {runner.summary(totals, time.monotonic() - start, stored)}{note}", file=sys.stderr)
  print(f"wrote {items} ({'lora.lora_restore_path' if lora.is_adapter(plan.family) else 'load_parameters_path'}"
        f"={items})")
  return 0

