"""Pipeline construction: Create(tasks) | Reshuffle | WriteSlices | barrier | Commit."""
from __future__ import annotations

import time

import apache_beam as beam

from pipeline.plan import Plan
from transforms.dofns import CollectWriters, CommitFn, CreateArraysFn, WriteSliceFn
from transforms.orbax_writer import CheckpointTarget


def add_to_maxtext(pipeline: beam.Pipeline, plan: Plan, target: CheckpointTarget,
                   progress_path: str | None = None) -> beam.PCollection:
  """Adds the HF -> MaxText steps; the result holds the committed items path once all is written."""
  created = (pipeline
             | "Seed" >> beam.Create([None])
             | "CreateArrays" >> beam.ParDo(CreateArraysFn(target, plan.arrays)))
  written = (pipeline
             | "Plan" >> beam.Create(plan.tasks, reshuffle=False)
             | "Distribute" >> beam.Reshuffle()
             | "WriteSlices" >> beam.ParDo(WriteSliceFn(target, plan.family, plan.sizes, progress_path)))
  return ((created, written)
          | "AllWrites" >> beam.Flatten()
          | "Barrier" >> beam.CombineGlobally(CollectWriters())
          | "Commit" >> beam.ParDo(CommitFn(target, plan.arrays, len(plan.tasks), plan.scan_layers,
                                            time.time_ns())))
