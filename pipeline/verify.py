"""Re-check a finished HF -> MaxText conversion against its source, one slice per Beam element.

  python -m pipeline.verify load_parameters_path=<out>/0/items --hf_model_path=DIR [--runner=...]

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
from pipeline.planner import Plan, plan_to_maxtext
from transforms import storage
from transforms.dofns import convert_slice
from transforms.hub_io import HubAccess
from transforms.shard_dofns import CheckpointReadingFn
from transforms.orbax_layout import NUMPY_DTYPES
from transforms.orbax_reader import CheckpointReader
from transforms.tensor_ops import contiguous

MAXTEXT_KEYS = ("load_parameters_path", "model_name", "hf_model_path", "use_multimodal", "vocab_size",
                "hf_access_token", "revision")
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
  """Converts one source tensor again and compares it with what the checkpoint holds."""

  def process(self, task) -> Iterator[tuple[str, str]]:
    dtype = NUMPY_DTYPES[task.array.dtype]
    expected = contiguous(convert_slice(task, self.param_of(task.param), self.sizes)[0], dtype)
    stored = np.asarray(self.reader.read_slice(task.array.path, task.index, task.window).result())
    self.tensor_done(task.nbytes, stored.nbytes)
    yield task.array.path, compare(stored, expected)


def add_verify(pipeline: beam.Pipeline, plan: Plan, items: str, progress_path: str | None,
               hub_access: HubAccess | None = None) -> beam.PCollection:
  return (pipeline
          | "PlanSlices" >> beam.Create(plan.tasks, reshuffle=False)
          | "DistributeSlices" >> beam.Reshuffle()
          | "Verify" >> beam.ParDo(VerifySliceFn(items, models.BY_NAME[plan.family], plan.sizes, progress_path, hub_access))
          | "Summarise" >> beam.combiners.Count.PerElement()
          | "Report" >> beam.combiners.ToList())


def verify(options: PipelineOptions, flags=()) -> tuple[str, dict[tuple[str, str], int]]:
  """The family, and {(array path, verdict): slices} for every slice of the checkpoint."""
  conv = options.view_as(ConversionOptions)
  access = hub.access(conv.hf_access_token, conv.hf_cache_dir)
  source = conv.load_parameters_path and hub.resolve_source(conv.hf_model_path, conv.model_name, conv.revision)
  if not source:
    raise ConversionError("verify needs load_parameters_path=<dir>/0/items and --hf_model_path=<its HF source>")
  if runner.on_dataflow(options) and not conv.verify_report:
    raise ConversionError("verify on Dataflow needs --verify_report=gs://...: the report is read back from there")
  runner.check_dataflow(options, {"load_parameters_path": conv.load_parameters_path,
                                  "hf_model_path": conv.hf_model_path, "verify_report": conv.verify_report})
  reader = CheckpointReader(conv.load_parameters_path)
  plan = plan_to_maxtext(source, bool(reader.scan_layers()), "bfloat16", conv.model_name,
                         use_multimodal=conv.use_multimodal, vocab_size=conv.vocab_size)
  present = set(reader.paths)
  missing = sorted(a.path for a in plan.arrays if a.path not in present)
  if missing:
    raise ConversionError(f"{conv.load_parameters_path}: no array {missing[0]} ({len(missing)} missing); "
                          "not a conversion of this model")
  stored = {a.path: reader.spec(a.path)[1] for a in plan.arrays}
  arrays = {a.path: a.__class__(a.path, a.shape, stored[a.path], a.chunks) for a in plan.arrays}
  plan = Plan(plan.family, plan.sizes, plan.scan_layers, plan.save_dtype, tuple(arrays.values()),
              tuple(dataclasses.replace(t, array=arrays[t.array.path]) for t in plan.tasks), plan.unused)
  with tempfile.TemporaryDirectory(prefix="ckptflow-verify-") as tmp:
    report = conv.verify_report or os.path.join(tmp, "report.json")

    def build(pipeline, progress_path):
      (add_verify(pipeline, plan, conv.load_parameters_path, progress_path, access)
       | "WriteReport" >> beam.Map(lambda counts: storage.write_text(
           report, json.dumps([[path, verdict, n] for (path, verdict), n in counts]))))
    runner.run(build, runner.with_local_defaults(options, flags), len(plan.tasks), "verify", conv.progress,
               wait=True)
    return plan.family, {(path, verdict): n for path, verdict, n in json.loads(storage.read_text(report))}


def main(argv: list[str]) -> int:
  flags = cli.start(argv, "python -m pipeline.verify", __doc__, MAXTEXT_KEYS)
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
