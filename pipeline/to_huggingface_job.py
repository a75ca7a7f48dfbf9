"""MaxText Orbax checkpoint -> HF safetensors, as a Beam pipeline.

  python -m pipeline.to_huggingface model_name=qwen3-4b load_parameters_path=gs://b/ckpt/0/items \\
      base_output_directory=gs://b/hf-out weight_dtype=bfloat16 [--hf_model_path=DIR]

writes sharded safetensors (model-0000i-of-0000N.safetensors + model.safetensors.index.json, or
model.safetensors), config.json and the tokenizer files of --hf_model_path to base_output_directory
(local, gs://, or hf://user/repo). A checkpoint ckptflow wrote needs no --hf_model_path: its
ckptflow_manifest.json carries config.json and generation_config.json, and names where the
tokenizer files are.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, destination, hub, lora, outputs, preflight, runner, up_to_date, usage
from pipeline.build import add_to_huggingface
from transforms.errors import ConversionError
from pipeline.options import ConversionOptions, is_dry_run
from pipeline.planner import parse_size
from pipeline.plan_hf import INDEX_FILE, HfPlan, plan_to_huggingface, target_config
from transforms import hub_io, manifest, run_dirs, storage
from transforms.orbax_layout import NUMPY_DTYPES
from transforms.orbax_reader import CheckpointReader
from transforms.shard_dofns import AUX_FILES

MAXTEXT_KEYS = usage.KEYS["to_huggingface"]

# Every ConversionOptions field this command reads; its flex template's parameters are these minus
# template_metadata.NOT_TEMPLATE_PARAMETERS.
OPTIONS = ("load_parameters_path", "base_output_directory", "model_name", "scan_layers", "weight_dtype",
           "hf_model_path", "hf_access_token", "max_shard_size", "use_multimodal", "vocab_size", "max_element_size",
           "quantize_fp8_blocks", "revision", "hf_cache_dir", "workers", "worker_mbps", "overwrite", "resume",
           "progress", "wait", "verbose", "lora_restore_path", "lora_rank", "lora_alpha", "step", "all_steps")
REQUIRED = ("load_parameters_path", "base_output_directory")


def prepare_output(output: str, overwrite: bool, resume: bool = False, marker: str = "config.json") -> None:
  """Refuses to mix with an existing model directory unless `overwrite` (then removes only our
  files) or `resume` of an unfinished one (no `marker`, config.json, yet: it is written last)."""
  ours = [n for n in storage.list_names(output)
          if n.endswith(".safetensors") or n in (INDEX_FILE, "config.json", marker, manifest.MANIFEST, *AUX_FILES)]
  if ours and resume and marker not in ours:
    return
  if ours and not overwrite:
    raise ConversionError(f"{output} already holds a model ({', '.join(ours[:3])}...); pass --overwrite to "
                          "replace it" + ("" if marker in ours else ", or --resume to finish it"))
  for name in ours:
    storage.remove_tree(storage.join(output, name))
  storage.check_writable(output)


def build_manifest(plan: HfPlan, conv: ConversionOptions, hf_model_path: str | None) -> dict:
  """The provenance written beside the model (ckptflow_manifest.json), before config.json. Never the token."""
  options = {k: getattr(conv, k) for k in ("load_parameters_path", "model_name", "scan_layers", "weight_dtype",
                                            "hf_model_path", "max_shard_size", "use_multimodal", "vocab_size",
                                            "max_element_size", "quantize_fp8_blocks", "resume", "revision",
                                            "lora_restore_path", "lora_rank", "lora_alpha")}
  sources = manifest.orbax_source_files(plan.items)
  for items in sorted({t.lora.items for shard in plan.shards for t in shard.tensors if t.lora is not None}):
    sources += manifest.orbax_source_files(items)  # a merged adapter's checkpoint
  if hf_model_path:
    sources.append(storage.join(hf_model_path, "config.json"))
  return manifest.build("to_huggingface", plan.family, options, sources,
                        (o[0] for shard in plan.shards for t in shard.tensors for o in t.outputs), plan.items)


def config_source(conv: ConversionOptions) -> str | None:
  """Where config.json and the tokenizer files come from (--hf_model_path, possibly on the Hub)."""
  return conv.hf_model_path and hub.resolve_source(conv.hf_model_path, None, conv.revision)


def plan_from_options(conv: ConversionOptions, output: str, hf_model_path: str | None = None) -> HfPlan:
  mode = lora.to_huggingface_mode(conv)
  split_bytes = parse_size(conv.max_element_size, "--max_element_size")
  if mode == lora.ADAPTER:
    return lora.plan_adapter_to_huggingface(conv, output, hf_model_path or config_source(conv), split_bytes)
  if not conv.load_parameters_path:
    raise ConversionError("load_parameters_path=<dir>/0/items is required (or a training run's checkpoints/)")
  items = run_dirs.resolve(conv.load_parameters_path, conv.step)
  config, where = target_config(hf_model_path or config_source(conv), conv.model_name, items)
  plan = plan_to_huggingface(items, output, config, where,
                             conv.model_name, conv.scan_layers, conv.weight_dtype, conv.max_shard_size,
                             conv.use_multimodal, conv.vocab_size, split_bytes, conv.quantize_fp8_blocks)
  if mode == lora.MERGED:
    plan = lora.merge_into(plan, conv, hf_model_path or config_source(conv), split_bytes)
  return plan


def carried_files(plan: HfPlan, hf_model_path: str | None) -> tuple[dict[str, str], str | None]:
  """Without --hf_model_path, what a checkpoint ckptflow wrote carries in its manifest: the files to write
  as recorded (generation_config.json; config.json is the plan's) and where to copy tokenizer files
  from (the model it was made from, when still there). With it: nothing carried, and --hf_model_path."""
  recorded = None if hf_model_path or plan.config_file != "config.json" else manifest.recorded_model(plan.items)
  if recorded is None:
    return {}, hf_model_path
  files = {name: text for name, text in recorded.files.items() if name != "config.json"}
  source = recorded.tokenizer_from
  try:
    reachable = bool(source) and storage.exists(storage.join(source, "config.json"))
  except ConversionError:
    reachable = False
  if reachable:
    found = [n for n in AUX_FILES if n not in files and storage.exists(storage.join(source, n))]
    tokenizer = f"{', '.join(found)} from {source}" if found else f"no tokenizer files in {source}"
    print(f"note: {', '.join(['config.json', *files])} as recorded in {recorded.path}; {tokenizer}", file=sys.stderr)
    return files, source
  why = f"{source} is not reachable" if source else "it records no HF model directory"
  print(f"note: {', '.join(['config.json', *files])} as recorded in {recorded.path}; no tokenizer files copied "
        f"({why}): pass --hf_model_path=DIR to copy them", file=sys.stderr)
  return files, None


def stored_itemsizes(plan: HfPlan) -> dict[str, int]:
  """Each source array's stored bytes per element (from its metadata)."""
  reader = CheckpointReader(plan.items)
  arrays = {s.array for shard in plan.shards for t in shard.tensors for s in t.sources}
  return {a: NUMPY_DTYPES.get(reader.spec(a)[1], NUMPY_DTYPES["float32"]).itemsize for a in arrays}


def read_bytes(plan: HfPlan) -> int | None:
  """The bytes the plan's shards read (for the progress line's ETA); None when unknown."""
  try:
    return preflight.to_huggingface_preflight(plan, stored_itemsizes(plan)).read_bytes if plan.shards else 0
  except ConversionError:
    return None


def preflight_report(conv: ConversionOptions) -> preflight.Preflight:
  plan = plan_from_options(conv, conv.base_output_directory or ".")
  return preflight.to_huggingface_preflight(plan, stored_itemsizes(plan))


def lock_options(conv: ConversionOptions) -> dict:
  """What the writer lock records about this run, so a run it stops can say what is being written."""
  return {k: hub_io.redact(getattr(conv, k)) if isinstance(getattr(conv, k), str) else getattr(conv, k)
          for k in ("load_parameters_path", "model_name", "weight_dtype", "hf_model_path", "resume", "overwrite")}


def convert(options: PipelineOptions, flags: Sequence[str] = (), take_over: bool | None = None
            ) -> tuple[HfPlan, dict[str, int]]:
  """Plans, writes every shard, then the index and config; returns the plan and the run's counters.

  An hf://user/repo destination gets each shard uploaded by the worker that wrote it, as soon as
  it is whole, and the index and config.json in one commit after every shard is in. A local or
  gs:// destination is held exclusively for the run (pipeline/destination.py); `take_over`
  (default: --resume or --overwrite) lets it replace the lock of a run that died.
  """
  conv = options.view_as(ConversionOptions)
  if not conv.base_output_directory:
    raise ConversionError("base_output_directory=... is required")
  access = hub.access(conv.hf_access_token, conv.hf_cache_dir)
  hf_model_path = config_source(conv)
  output = conv.base_output_directory
  runner.check_dataflow(options, {"load_parameters_path": conv.load_parameters_path,
                                  "base_output_directory": output, "hf_model_path": hf_model_path,
                                  "lora_restore_path": conv.lora_restore_path})
  take_over = conv.resume or conv.overwrite if take_over is None else take_over
  remote = None if runner.is_local(options) else runner.runner_name(options)
  with destination.claim(output, "to_huggingface", lock_options(conv), take_over, remote=remote) as claim:
    plan = plan_from_options(conv, output, hf_model_path)
    if conv.load_parameters_path:  # a run's checkpoints/ means one step: the manifest records which
      conv.load_parameters_path, conv.step = plan.items, None
    written = outputs.HfOutput(plan, output)
    run_options = runner.with_local_defaults(options, flags)
    scratch_writers = runner.local_workers(run_options)
    if hub.is_hub(output):  # the repo is made (or its old model files deleted) before its shards are listed
      destination.check_space(outputs.hf_needs(output, plan.shards, 0, 0, scratch_writers))
      hub.prepare_destination(output, conv.overwrite, conv.resume)
    present = [] if hub.is_hub(output) else [n for n in storage.list_names(output) if n in written.names()]
    resuming = conv.resume and (hub.is_hub(output) or bool(present) and plan.config_file not in present)
    todo = plan
    if resuming:  # a shard exists only once it is whole (written to a temp name, then renamed or committed)
      todo = dataclasses.replace(plan, shards=tuple(s for s in plan.shards
                                                    if not (storage.exists(s.file) and storage.size(s.file) == s.size)))
    carried, aux_from = carried_files(plan, hf_model_path)
    if plan.config_file == lora.ADAPTER_CONFIG:
      aux_from = None  # an adapter has no tokenizer
    if not hub.is_hub(output):
      reclaimed = outputs.existing_bytes(output, written.names()) if conv.overwrite and not resuming else 0
      destination.check_space(outputs.hf_needs(output, todo.shards, outputs.aux_bytes(aux_from), reclaimed, 0))
      prepare_output(output, conv.overwrite, conv.resume, plan.config_file)
    written.sweep()  # only now: a model directory we were refused is left as it is
    written.fresh = not resuming
    if resuming:
      print(f"resuming {output}: {len(plan.shards) - len(todo.shards)} of {len(plan.shards)} shards already written",
            file=sys.stderr)
    provenance = build_manifest(plan, conv, hf_model_path)
    with destination.guarded(written, conv.resume):
      totals = runner.run(lambda p, progress: add_to_huggingface(p, todo, aux_from, progress, index=plan.index(),
                                                                 provenance=provenance, hub=access, lock=claim.held,
                                                                 carried=carried),
                          run_options, todo.tensor_count, "to_huggingface", conv.progress, unit="tensors",
                          total_bytes=read_bytes(todo) if conv.progress and runner.is_local(run_options) else None)
    if not runner.waits(run_options):
      claim.hand_over()  # the job's last step releases the lock
  return plan, totals


def main(argv: list[str]) -> int:
  flags = cli.start(argv, "python -m pipeline.to_huggingface", __doc__, MAXTEXT_KEYS, "to_huggingface", OPTIONS)
  if flags is None:
    return 0
  options = PipelineOptions(flags)
  if is_dry_run(options):
    conv = options.view_as(ConversionOptions)
    preflight.print_report(preflight_report(conv), conv)
    return 0
  if options.view_as(ConversionOptions).all_steps:
    return convert_all_steps(flags)
  start = time.monotonic()
  plan, totals = convert(options, flags)
  destination = options.view_as(ConversionOptions).base_output_directory
  if not runner.waits(options):
    print(f"the job writes {len(plan.shards)} shard(s) to {destination}, then the index and {plan.config_file} (last)")
    return 0
  layout = "scanned" if plan.scan_layers else "unscanned"
  stored = storage.stored_bytes(destination, outputs.HfOutput(plan, destination).names())
  print(f"{plan.family} ({layout}): {runner.summary(totals, time.monotonic() - start, stored, 'tensor')}",
        file=sys.stderr)
  print(f"wrote {len(plan.shards)} shard(s) and {plan.config_file} to {destination}")
  return 0


def convert_all_steps(flags: Sequence[str]) -> int:
  """Every committed step of the run at load_parameters_path into <base_output_directory>/<step>/, skipping
  steps whose output is up to date (the batch command's check: committed, same options, same sources)."""
  conv = PipelineOptions(list(flags)).view_as(ConversionOptions)
  if conv.step is not None:
    raise ConversionError(f"--all_steps converts every committed step; drop --step={conv.step}")
  if not conv.load_parameters_path or not conv.base_output_directory:
    raise ConversionError("--all_steps needs load_parameters_path=<run>/checkpoints and base_output_directory=")
  run, output = conv.load_parameters_path, conv.base_output_directory
  if run_dirs.steps_dir(run) is None:
    raise ConversionError(f"--all_steps: load_parameters_path={run} is not a training run (<run>/checkpoints/<step>/"
                          "items); for one checkpoint drop --all_steps")
  steps = run_dirs.committed_steps(run)
  if not steps:
    raise ConversionError(f"--all_steps: {run} has no committed step yet")
  replaced = ("--all_steps", "--load_parameters_path=", "--base_output_directory=")
  common = [f for f in flags if not f.startswith(replaced)]
  for step in steps:
    items, out = run_dirs.step_items(run, step), storage.join(output, str(step))
    step_flags = [*common, f"--load_parameters_path={items}", f"--base_output_directory={out}"]
    job = up_to_date.Job(f"step {step}", "to_huggingface", items, out, tuple(step_flags))
    decision = up_to_date.decide(job)
    if not decision.run:
      print(f"step {step}: skipped ({decision.reason})", flush=True)
      continue
    if up_to_date.output_state(job) != "missing":
      step_flags.append("--overwrite")
    start = time.monotonic()
    convert(PipelineOptions(step_flags), step_flags)
    print(f"step {step}: converted into {out} in {time.monotonic() - start:.1f}s ({decision.reason})", flush=True)
  return 0

