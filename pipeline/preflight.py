"""The pre-flight report: what a conversion will do, from headers and metadata only.

Printed by `python -m pipeline.plan <the conversion's arguments>` and by `--dry_run` on either
direction, before any tensor byte is read: elements, bytes, the largest element, the memory one
worker needs, the output's arrays and chunks, and the wall time N workers should take.
"""
from __future__ import annotations

import dataclasses
import math
import os

import models
from pipeline import runner
from pipeline.options import ConversionOptions
from pipeline.planner import Plan
from pipeline.plan_hf import HfPlan
from pipeline.runner import human_bytes
from transforms.orbax_layout import NUMPY_DTYPES
from transforms.orbax_writer import WRITE_BLOCK_BYTES
from transforms.quantized import is_quantized
from transforms.safetensors_io import DTYPES
from transforms.shard_dofns import PREFETCH_BYTES

# A worker process besides its elements: Python, Beam's SDK harness, numpy, tensorstore's pools and
# caches. Calibrated on bench/scale.py: 1.5-1.7 GB peak per process with 256 MiB elements.
WORKER_BASE_BYTES = 900 * 2**20


@dataclasses.dataclass(frozen=True)
class Rates:
  """What the time estimate assumes of a runner: its start-up, one worker's source MB/s in each
  direction, what each further worker adds, how many workers can add anything, and the final flush."""
  start_seconds: float
  worker_mbps: dict[str, float]
  extra_worker_share: float
  useful_workers: int | None  # None: every worker adds
  flush_bytes_per_second: float | None  # None: written back while converting (transforms/writeback.py)
  not_included: str = ""  # what the estimate leaves out, said under it


# The local runner (worker threads of one process): bench/run.sh and bench/scale.py on the 2-CPU
# development VM, 2026-12-03. Start-up with imports and the commit ~2.5 s; one worker converts ~300 MB/s
# of source to MaxText (8B-shaped, 8 layers: 20.45 s; DeepSeek-V3 slice, 9.8 GB: 36.1 s) and ~480 MB/s
# back (one 3.85 GB shard: 9.2-10.7 s since ckptflow decodes local chunks itself); a second worker on the second CPU adds 0.45 of one (14.79 s and
# 26.2 s). Workers beyond the CPUs add nothing: they share them.
LOCAL = Rates(start_seconds=2.5, worker_mbps={"to_maxtext": 300.0, "to_huggingface": 480.0},
              extra_worker_share=0.45, useful_workers=os.cpu_count() or 1, flush_bytes_per_second=None)
# Remote runners (Dataflow): each worker is a VM of its own, so each adds a whole one until the
# storage is the limit. The per-worker rate is that of one local worker process (180 MB/s, bench/scale.py);
# no Dataflow job has been measured. Start-up is the driver's planning and submission: the workers'
# VMs take minutes more to start, which the estimate leaves out.
REMOTE = Rates(start_seconds=10.0, worker_mbps={"to_maxtext": 180.0, "to_huggingface": 180.0},
               extra_worker_share=1.0, useful_workers=None, flush_bytes_per_second=1e9,
               not_included="the minutes a remote runner takes to start its workers' machines")


@dataclasses.dataclass(frozen=True)
class Preflight:
  direction: str
  family: str
  tensors: int
  elements: int
  read_bytes: int
  written_bytes: int
  largest_element: str
  largest_element_bytes: int
  worker_memory_bytes: int
  arrays: int
  chunks: int
  extra: tuple[tuple[str, str], ...] = ()
  # The most bytes one worker must read by itself: the largest element going to MaxText, the largest
  # shard going to HF (a shard is written front to back by one worker). Default: the largest element.
  largest_unit_bytes: int | None = None

  def estimated_seconds(self, workers: int, rates: Rates, worker_mbps: float | None = None) -> float:
    """Start-up, then bytes read over the workers' combined throughput (a worker cannot split its
    unit of work), then the flush of what was written, if it waits until the end."""
    per_worker = (worker_mbps or rates.worker_mbps[self.direction]) * 1e6
    useful = min(max(workers, 1), rates.useful_workers or workers)
    effective = 1 + rates.extra_worker_share * (useful - 1)
    unit = self.largest_element_bytes if self.largest_unit_bytes is None else self.largest_unit_bytes
    work = max(self.read_bytes / (per_worker * effective), unit / per_worker)
    flush = self.written_bytes / rates.flush_bytes_per_second if rates.flush_bytes_per_second else 0.0
    return rates.start_seconds + work + flush

  def lines(self, workers: tuple[int, ...], rates: Rates, worker_mbps: float | None = None,
            runner_label: str = "the local runner") -> list[str]:
    out = [f"{self.direction} {self.family}: pre-flight plan (headers and metadata only)",
           f"  tensors            {self.tensors:,}",
           f"  elements           {self.elements:,} (tensors above --max_element_size are split into row blocks)",
           f"  read               {human_bytes(self.read_bytes)}",
           f"  written            {human_bytes(self.written_bytes)} before compression",
           f"  largest element    {self.largest_element} ({human_bytes(self.largest_element_bytes)})",
           f"  memory per worker  about {human_bytes(self.worker_memory_bytes)} (bounded by the largest element, "
           "not the model)",
           f"  output             {self.arrays:,} arrays, {self.chunks:,} chunks" if self.direction == "to_maxtext"
           else f"  output             {self.arrays:,} safetensors files"]
    out += [f"  {k:<18} {v}" for k, v in self.extra]
    mbps = worker_mbps or rates.worker_mbps[self.direction]
    for n in workers:
      shared = (f", sharing {rates.useful_workers} CPU(s)" if rates.useful_workers and n > rates.useful_workers
                else "")
      out.append(f"  estimate           {format_seconds(self.estimated_seconds(n, rates, worker_mbps))} with {n} "
                 f"worker(s) at {mbps:g} MB/s each on {runner_label}{shared}")
    if rates.not_included:
      out.append(f"  (the estimate leaves out {rates.not_included})")
    return out


def format_seconds(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f}s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def to_maxtext_preflight(plan: Plan) -> Preflight:
  """A worker holds one element's source bytes, its converted value (float32 when the family
  rescales 16-bit weights) and one write block being copied, above its base. An element of slices
  that share stored chunks (planner.Plan.elements) holds all their source bytes, read at once."""
  def footprint(task) -> int:
    rescaled = any(hasattr(op, "factor") or hasattr(op, "amount") for op in _ops(plan, task))
    wide = 4 if rescaled or any(is_quantized(s) for s in task.sources) else 0
    elements = task.written_nbytes // NUMPY_DTYPES[task.array.dtype].itemsize
    return task.nbytes + max(task.written_nbytes, elements * wide) + min(task.written_nbytes, WRITE_BLOCK_BYTES)

  def element_footprint(group) -> int:
    return sum(t.nbytes for t in group) + max(footprint(t) - t.nbytes for t in group)

  groups = plan.elements
  largest = max(groups, key=lambda g: max(sum(t.nbytes for t in g), max(t.written_nbytes for t in g)))
  chunks = sum(math.prod(-(-n // c) for n, c in zip(a.shape, a.chunks)) for a in plan.arrays)
  first = largest[0]
  name = first.sources[0].name + (f" rows {first.rows[0]}:{first.rows[1]}" if first.rows else "")
  if len(largest) > 1:
    name += f" and {len(largest) - 1} more slices of its chunks"
  extra = ()
  quantized = sum(1 for s in {s.name: s for t in plan.tasks for s in t.sources}.values() if is_quantized(s))
  if quantized:  # (a fused tensor read once per array it splits into also makes the two differ)
    extra = (("dequantized", f"{human_bytes(plan.dequantized_bytes)} in float32 from {quantized:,} quantized "
                             "tensors (read above: their data and scales)"),)
  return Preflight("to_maxtext", plan.family, len({s.name for t in plan.tasks for s in t.sources}), len(groups),
                   plan.source_bytes, sum(t.written_nbytes for t in plan.tasks), name,
                   max(sum(t.nbytes for t in largest), max(t.written_nbytes for t in largest)),
                   WORKER_BASE_BYTES + max(element_footprint(g) for g in groups), len(plan.arrays), chunks, extra)


def _ops(plan: Plan, task) -> tuple:
  param = models.BY_NAME[plan.family].param(task.param)
  return tuple(op for p in (param if isinstance(param, tuple) else (param,)) for op in p.ops)


def to_huggingface_preflight(plan: HfPlan, stored_itemsize: dict[str, int]) -> Preflight:
  """A worker holds the piece being converted, the copy it casts to, the next one being read, and the
  last one still on its way to a local disk (transforms/direct_io.py)."""
  pieces = []
  for shard in plan.shards:
    for task in shard.tensors:
      for block in task.blocks:
        out = task.block_nbytes(block)
        itemsize = max(stored_itemsize.get(s.array, 4) for s in task.sources)
        read = out // DTYPES[task.dtype].itemsize * itemsize
        pieces.append((task.name, block, read, out))
  name, block, read, out = max(pieces, key=lambda p: max(p[2], p[3]))
  label = name + (f" rows {block.rows[0]}:{block.rows[1]}" if block is not None else "")
  memory = WORKER_BASE_BYTES + max(r + 2 * o for _, _, r, o in pieces) + max(o for *_, o in pieces) + PREFETCH_BYTES
  by_shard: dict[str, int] = {}
  for shard in plan.shards:
    by_shard[shard.file] = sum(p[2] for p in pieces if any(p[0] == t.name for t in shard.tensors))
  return Preflight("to_huggingface", plan.family, plan.tensor_count, len(pieces), sum(p[2] for p in pieces),
                   plan.total_size, label, max(read, out), memory, len(plan.shards), 0,
                   largest_unit_bytes=max(by_shard.values()))


def print_report(report: Preflight, conv: ConversionOptions) -> None:
  """The report for the runner `conv` names: the local runner's rates, or a remote runner's."""
  workers = tuple(int(n) for n in str(conv.workers).split(",") if n.strip())
  local = runner.is_local(conv)
  print("\n".join(report.lines(workers, LOCAL if local else REMOTE, conv.worker_mbps,
                               "the local runner" if local else runner.runner_name(conv))))
