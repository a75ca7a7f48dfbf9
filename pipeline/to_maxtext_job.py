"""HF safetensors -> MaxText Orbax checkpoint, as a Beam pipeline.

  python -m pipeline.to_maxtext model_name=llama3.1-8b base_output_directory=gs://b/out \\
      scan_layers=True --hf_model_path=/data/Llama-3.1-8B --save_dtype=bfloat16

writes <base_output_directory>/0/items, which MaxText loads with load_parameters_path=.../0/items.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, destination, hub, lora, outputs, preflight, runner
from pipeline.build import add_to_maxtext
from transforms.errors import ConversionError
from pipeline.options import ConversionOptions, is_dry_run
from pipeline.planner import Plan, parse_size, plan_to_maxtext
from transforms import hub_io, manifest, orbax_layout, orbax_writer, storage
from transforms.orbax_writer import CheckpointTarget

MAXTEXT_KEYS = ("model_name", "base_output_directory", "scan_layers", "checkpoint_storage_use_zarr3",
                "checkpoint_storage_use_ocdbt", "hf_model_path", "save_dtype", "use_multimodal", "vocab_size",
                "hf_access_token", "revision", "hf_lora_adapter_path", "load_parameters_path", "lora.lora_rank",
                "lora.lora_alpha")
# Every ConversionOptions field this command reads; its flex template's parameters are these minus
# template_metadata.NOT_TEMPLATE_PARAMETERS.
OPTIONS = ("hf_model_path", "base_output_directory", "model_name", "scan_layers", "save_dtype",
           "checkpoint_storage_use_zarr3", "checkpoint_storage_use_ocdbt", "simulated_cpu_devices_count",
           "use_multimodal", "vocab_size", "zstd_level", "max_element_size", "hf_access_token", "revision",
           "hf_cache_dir", "workers", "worker_mbps", "overwrite", "resume", "progress", "wait", "verbose",
           "hf_lora_adapter_path", "merge_lora", "load_parameters_path", "lora_rank", "lora_alpha")
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
  the plan was made from (default: the config.json beside the source shards).
  """
  options = {k: getattr(conv, k) for k in ("hf_model_path", "model_name", "scan_layers", "save_dtype",
                                            "checkpoint_storage_use_zarr3", "checkpoint_storage_use_ocdbt",
                                            "simulated_cpu_devices_count", "zstd_level", "use_multimodal",
                                            "vocab_size", "max_element_size", "resume", "revision",
                                            "hf_lora_adapter_path", "merge_lora", "load_parameters_path",
                                            "lora_rank", "lora_alpha")}
  sources = [ref for task in plan.tasks for ref in task.sources]
  # The shards, and the config.json beside them (it decides shapes and transforms); a quantized
  # source's scales may sit in another shard, a merged LoRA's factors and adapter_config.json in the adapter.
  shards = [f for ref in sources for f in getattr(ref, "files", (ref.file,))]
  files = [*(config_files or (storage.join(storage.parent(sources[0].file), "config.json"),)), *shards]
  return manifest.build("to_maxtext", plan.family, options, files, (ref.name for ref in sources),
                        source or conv.hf_model_path)


def model_source(conv: ConversionOptions) -> str:
  """Where the HF model is read from: a local or gs:// directory, or hf://org/repo@<commit>."""
  source = hub.resolve_source(conv.hf_model_path, conv.model_name, conv.revision)
  if not source:
    raise ConversionError("--hf_model_path is required: a local or gs:// directory with config.json and "
                          "*.safetensors, or a Hub repo (org/repo), or a model_name with a known Hub repo")
  return source


def plan_from_options(conv: ConversionOptions, source: str | None = None) -> Plan:
  split_bytes = parse_size(conv.max_element_size, "--max_element_size")
  if lora.to_maxtext_mode(conv) == lora.ADAPTER:
    return lora.plan_adapter_to_maxtext(conv, split_bytes)
  return plan_to_maxtext(source or model_source(conv), conv.scan_layers is not False, conv.save_dtype,
                         conv.model_name, conv.simulated_cpu_devices_count, conv.use_multimodal, conv.vocab_size,
                         split_bytes, lora.merged_view(conv))


def lock_options(conv: ConversionOptions) -> dict:
  """What the writer lock records about this run, so a run it stops can say what is being written."""
  return {k: hub_io.redact(getattr(conv, k)) if isinstance(getattr(conv, k), str) else getattr(conv, k)
          for k in ("hf_model_path", "model_name", "scan_layers", "save_dtype", "resume", "overwrite")}


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
  adapter_only = lora.to_maxtext_mode(conv) == lora.ADAPTER
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
                              custom_metadata=adapter.custom_metadata if adapter else "")
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
                          run_options, len(todo.tasks), "to_maxtext", conv.progress)
    if not runner.waits(run_options):
      claim.hand_over()  # the job's commit step releases the lock
  return plan, target.items, totals


def main(argv: list[str]) -> int:
  flags = cli.start(argv, "python -m pipeline.to_maxtext", __doc__, MAXTEXT_KEYS)
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
    print(f"ignored: {len(plan.unused)} tensors a MaxText {plan.family} model does not use: {shown}", file=sys.stderr)
  if not runner.waits(options):
    print(f"the job writes {items} and commits it when every slice is written (load_parameters_path={items})")
    return 0
  print(f"{plan.family}: {runner.summary(totals, time.monotonic() - start)}", file=sys.stderr)
  print(f"wrote {items} ({'lora.lora_restore_path' if lora.is_adapter(plan.family) else 'load_parameters_path'}"
        f"={items})")
  return 0

