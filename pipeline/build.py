"""Pipeline construction, both directions: plan elements | Reshuffle | write | barrier | commit."""
from __future__ import annotations

import time

import apache_beam as beam

import models

from pipeline.planner import Plan
from pipeline.plan_hf import HfPlan
from transforms.hub_io import HubAccess
from transforms.dofns import CollectWriters, CommitFn, CreateArraysFn, WriteSliceFn
from transforms.orbax_writer import CheckpointTarget
from transforms.shard_dofns import CountTensors, FinalizeFn, WriteShardFn
from transforms.writer_lock import Held


def add_to_maxtext(pipeline: beam.Pipeline, plan: Plan, target: CheckpointTarget,
                   progress_path: str | None = None, provenance: dict | None = None,
                   hub: HubAccess | None = None, lock: Held | None = None) -> beam.PCollection:
  """Adds the HF -> MaxText steps; the result holds the committed items path once all is written.

  `hub` is how workers reach a Hub source (token option, endpoint, cache dir); `lock` is the
  destination's writer lock, released by the commit step.
  """
  created = (pipeline
             | "Seed" >> beam.Create([None])
             | "CreateArrays" >> beam.ParDo(CreateArraysFn(target, plan.arrays)))
  written = (pipeline
             | "Plan" >> beam.Create(plan.elements, reshuffle=False)
             | "Distribute" >> beam.Reshuffle()
             | "WriteSlices" >> beam.ParDo(WriteSliceFn(target, models.BY_NAME[plan.family], plan.sizes, progress_path, hub)))
  return ((created, written)
          | "AllWrites" >> beam.Flatten()
          | "Barrier" >> beam.CombineGlobally(CollectWriters())
          | "Commit" >> beam.ParDo(CommitFn(target, plan.arrays, len(plan.tasks), plan.scan_layers,
                                            time.time_ns(), provenance, lock)))


def add_to_huggingface(pipeline: beam.Pipeline, plan: HfPlan, hf_model_path: str | None,
                       progress_path: str | None = None, index: dict | None = None,
                       provenance: dict | None = None, hub: HubAccess | None = None,
                       lock: Held | None = None, carried: dict[str, str] | None = None) -> beam.PCollection:
  """Adds the MaxText -> HF steps: Create(shards) | Reshuffle | WriteShards | barrier | Finalize.

  `index` is the whole model's (when `plan` holds only the shards a resumed run still writes).
  `hub` is how workers reach an hf:// destination or a Hub --hf_model_path; `lock` is the
  destination's writer lock, released once config.json is written. `carried` are files written as
  given (by name; a checkpoint's manifest carries its generation_config.json), not from `hf_model_path`.
  """
  return (pipeline
          | "PlanShards" >> beam.Create(plan.shards, reshuffle=False)
          | "DistributeShards" >> beam.Reshuffle()
          | "WriteShards" >> beam.ParDo(WriteShardFn(plan.items, models.BY_NAME[plan.family], plan.sizes, progress_path, hub))
          | "ShardBarrier" >> beam.CombineGlobally(CountTensors())
          | "Finalize" >> beam.ParDo(FinalizeFn(plan.output, plan.tensor_count,
                                                plan.index() if index is None else index, plan.config,
                                                hf_model_path, provenance, hub, lock, plan.config_file,
                                                carried)))
