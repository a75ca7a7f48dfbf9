"""Re-check a finished conversion to MaxText against its source, one slice per Beam element.

  python -m pipeline.verify load_parameters_path=<out>/0/items --hf_model_path=DIR [--runner=...]
  python -m pipeline.verify load_parameters_path=<out>/0/items [load_full_state_path=<run>/<step>/items]

The source is the HF model at --hf_model_path, or a MaxText checkpoint: load_full_state_path=, or
the one the checkpoint's ckptflow_manifest.json records (to_maxtext from a MaxText source; then
--hf_model_path or model_name= only give config.json, as they did for the conversion).

Each element reads one source tensor (a ranged read) and its slice of the checkpoint, converts the
source again and compares: bit-identical, or within one rounding of the stored dtype (a checkpoint
another converter rounded differently). No model is ever held in memory, so a 671B conversion is
checked with the same workers that made it. Prints a per-array summary; exits 1 on any mismatch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Iterator

import apache_beam as beam

import models
import ml_dtypes
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, hub, runner
from transforms.errors import ConversionError
from pipeline.options import ConversionOptions
from pipeline.plan_hf import target_config
from pipeline.plan_maxtext import plan_from_maxtext
from pipeline.planner import Plan, plan_to_maxtext
from transforms import manifest, stopping, storage
from transforms.dofns import convert_slice
from transforms.hub_io import HubAccess
from transforms.shard_dofns import CheckpointReadingFn
from transforms.orbax_layout import NUMPY_DTYPES
from transforms.orbax_reader import CheckpointReader, read_together
from transforms.tensor_ops import contiguous

MAXTEXT_KEYS = ("load_parameters_path", "model_name", "hf_model_path", "use_multimodal", "vocab_size",
                "hf_access_token", "revision", "load_full_state_path")
# Every ConversionOptions field this command reads.
OPTIONS = (*MAXTEXT_KEYS, "hf_cache_dir", "verify_report", "progress")
EXACT, ROUNDED, MISMATCH = "bit-identical", "within one rounding", "MISMATCH"


def compare(stored: np.ndarray, expected: np.ndarray) -> str:
  """EXACT, ROUNDED (one step of the stored dtype, relative) or MISMATCH."""
  if stored.shape != expected.shape:
    return MISMATCH
  if np.array_equal(stored.reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8)):
    return EXACT
  eps = float(ml_dtypes.finfo(stored.dtype).eps)
  a, b = stored.astype(np.float64), expected.astype(np.float64)
  return ROUNDED if np.all(np.abs(a - b) <= np.abs(b) * eps) else MISMATCH


class VerifySliceFn(CheckpointReadingFn):
  """Converts one source tensor again and compares it with what the checkpoint holds; slices whose
  sources share stored chunks (planner.Plan.elements) are read together, each chunk once."""

  def process(self, element) -> Iterator[tuple[str, str]]:
    tasks = element if isinstance(element, tuple) else (element,)
    together = read_together([t.sources[0] for t in tasks], tasks[0].rows) if len(tasks) > 1 else [None]
    for task, value in zip(tasks, together):
      stopping.check()  # an interrupted run stops here, not after the rest of its bundle
      dtype = NUMPY_DTYPES[task.array.dtype]
      converted = convert_slice(task, self.param_of(task.param), self.sizes, None if value is None else [value])[0]
      expected = contiguous(converted, dtype)
      stored = np.asarray(self.reader.read_slice(task.array.path, task.index, task.window).result())
      self.tensor_done(task.nbytes, stored.nbytes)
      yield task.array.path, compare(stored, expected)


def add_verify(pipeline: beam.Pipeline, plan: Plan, items: str, progress_path: str | None,
               hub_access: HubAccess | None = None) -> beam.PCollection:
  return (pipeline
          | "PlanSlices" >> beam.Create(plan.elements, reshuffle=False)
          | "DistributeSlices" >> beam.Reshuffle()
          | "Verify" >> beam.ParDo(VerifySliceFn(items, models.BY_NAME[plan.family], plan.sizes, progress_path, hub_access))
          | "Summarise" >> beam.combiners.Count.PerElement()
          | "Report" >> beam.combiners.ToList())


def verify(options: PipelineOptions, flags=()) -> tuple[str, dict[tuple[str, str], int]]:
  """The family, and {(array path, verdict): slices} for every slice of the checkpoint."""
  conv = options.view_as(ConversionOptions)
  access = hub.access(conv.hf_access_token, conv.hf_cache_dir)
  if not conv.load_parameters_path:
    raise ConversionError("verify needs load_parameters_path=<dir>/0/items and its source (--hf_model_path=<its HF "
                          "source>, or load_full_state_path=, or a ckptflow_manifest.json that records it)")
  if runner.on_dataflow(options) and not conv.verify_report:
    raise ConversionError("verify on Dataflow needs --verify_report=gs://...: the report is read back from there")
  runner.check_dataflow(options, {"load_parameters_path": conv.load_parameters_path,
                                  "hf_model_path": conv.hf_model_path, "verify_report": conv.verify_report,
                                  "load_full_state_path": conv.load_full_state_path})
  reader = CheckpointReader(conv.load_parameters_path)
  plan = source_plan(conv, reader)
  present = set(reader.paths)
  missing = sorted(a.path for a in plan.arrays if a.path not in present)
  if missing:
    raise ConversionError(f"{conv.load_parameters_path}: no array {missing[0]} ({len(missing)} missing); "
                          "not a conversion of this model")
  stored = reader.specs([a.path for a in plan.arrays])
  arrays = {a.path: dataclasses.replace(a, dtype=stored[a.path][1]) for a in plan.arrays}
  plan = dataclasses.replace(plan, arrays=tuple(arrays.values()),
                             tasks=tuple(dataclasses.replace(t, array=arrays[t.array.path]) for t in plan.tasks))
  with tempfile.TemporaryDirectory(prefix="ckptflow-verify-") as tmp:
    report = conv.verify_report or os.path.join(tmp, "report.json")

    def build(pipeline, progress_path):
      (add_verify(pipeline, plan, conv.load_parameters_path, progress_path, access)
       | "WriteReport" >> beam.Map(lambda counts: storage.write_text(
           report, json.dumps([[path, verdict, n] for (path, verdict), n in counts]))))
    runner.run(build, runner.with_local_defaults(options, flags), len(plan.tasks), "verify", conv.progress,
               wait=True)
    return plan.family, {(path, verdict): n for path, verdict, n in json.loads(storage.read_text(report))}


def source_plan(conv: ConversionOptions, reader: CheckpointReader) -> Plan:
  """The plan of converting the checkpoint's source again into the checkpoint's own layout."""
  recorded = manifest.read(storage.parent(conv.load_parameters_path)) or {}
  options = recorded.get("options") or {}
  scan_layers = bool(reader.tree.scan_layers)
  source, full_state = conv.load_full_state_path, True
  if not source and not conv.hf_model_path and (options.get("load_parameters_path") or
                                               options.get("load_full_state_path")):
    source, full_state = recorded.get("source"), bool(options.get("load_full_state_path"))
  if source:
    config_path = conv.hf_model_path or options.get("hf_model_path")
    config_dir = config_path and hub.resolve_source(config_path, None, conv.revision or options.get("revision"))
    config, where = target_config(config_dir, conv.model_name or options.get("model_name"))
    return plan_from_maxtext(source, config, where, conv.model_name or options.get("model_name"), scan_layers,
                             use_multimodal=conv.use_multimodal or bool(options.get("use_multimodal")),
                             vocab_size=conv.vocab_size or options.get("vocab_size"), full_state=full_state)
  hf = hub.resolve_source(conv.hf_model_path or options.get("hf_model_path"), conv.model_name, conv.revision)
  if not hf:
    raise ConversionError("verify needs the checkpoint's source: --hf_model_path=<its HF source>, or "
                          "load_full_state_path=<the training state it came from>")
  return plan_to_maxtext(hf, scan_layers, "bfloat16", conv.model_name, use_multimodal=conv.use_multimodal,
                         vocab_size=conv.vocab_size)


def main(argv: list[str]) -> int:
  flags = cli.start(argv, "python -m pipeline.verify", __doc__, MAXTEXT_KEYS, "verify", OPTIONS)
  if flags is None:
    return 0
  start = time.monotonic()
  family, results = verify(PipelineOptions(flags), flags)
  by_verdict: dict[str, int] = {}
  for (path, verdict), n in sorted(results.items()):
    by_verdict[verdict] = by_verdict.get(verdict, 0) + n
    if verdict != EXACT:
      print(f"{verdict}: {path} ({n} slices)")
  summary = ", ".join(f"{n} {v}" for v, n in sorted(by_verdict.items()))
  print(f"{family}: verified {sum(by_verdict.values())} slices in {time.monotonic() - start:.1f}s: {summary}")
  return 1 if by_verdict.get(MISMATCH) else 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
