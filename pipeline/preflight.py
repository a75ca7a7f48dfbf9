"""The pre-flight report: what a conversion will do, from headers and metadata only.

Printed by `python -m pipeline.plan <the conversion's arguments>` and by `--dry_run` on either
direction, before any tensor byte is read: elements, bytes, the largest element, the memory one
worker needs, the output's arrays and chunks, and the wall time N workers should take.
"""
from __future__ import annotations

import dataclasses
import math

import models
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

# The time estimate, calibrated on the Llama-3.1-8B-shaped 4-layer benchmark (bench/README.md) with the
# local runner on 2 shared CPUs: ~10 s before the first slice is written (Beam starting its worker
# processes, planning) and the commit's flush of everything written (about 1 GB/s). 2 workers on 2
# CPUs convert 1.65x as fast as one (bench/scale.py): each extra worker counts 0.8 of one.
START_SECONDS = 10.0
FLUSH_BYTES_PER_SECOND = 1e9
EXTRA_WORKER_SHARE = 0.8


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

  def estimated_seconds(self, workers: int, worker_mbps: float) -> float:
    """Start-up, then bytes read over the workers' combined throughput (a worker cannot split its
    unit of work), then the flush of what was written."""
    per_worker = worker_mbps * 1e6
    effective = 1 + EXTRA_WORKER_SHARE * (max(workers, 1) - 1)
    unit = self.largest_element_bytes if self.largest_unit_bytes is None else self.largest_unit_bytes
    work = max(self.read_bytes / (per_worker * effective), unit / per_worker)
    return START_SECONDS + work + self.written_bytes / FLUSH_BYTES_PER_SECOND

  def lines(self, workers: tuple[int, ...], worker_mbps: float) -> list[str]:
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
    for n in workers:
      out.append(f"  estimate           {format_seconds(self.estimated_seconds(n, worker_mbps))} with {n} worker(s) "
                 f"at {worker_mbps:g} MB/s each")
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
  """A worker holds the piece being converted, the next one being read, and the copy it casts to."""
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
  memory = WORKER_BASE_BYTES + max(r + 2 * o for _, _, r, o in pieces) + PREFETCH_BYTES
  by_shard: dict[str, int] = {}
  for shard in plan.shards:
    by_shard[shard.file] = sum(p[2] for p in pieces if any(p[0] == t.name for t in shard.tensors))
  return Preflight("to_huggingface", plan.family, plan.tensor_count, len(pieces), sum(p[2] for p in pieces),
                   plan.total_size, label, max(read, out), memory, len(plan.shards), 0,
                   largest_unit_bytes=max(by_shard.values()))


def print_report(report: Preflight, conv: ConversionOptions) -> None:
  workers = tuple(int(n) for n in str(conv.workers).split(",") if n.strip())
  print("\n".join(report.lines(workers, conv.worker_mbps)))
