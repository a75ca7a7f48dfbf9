"""Scaling on a real-size DeepSeek-V3 slice: 1 vs 2 local workers, two model sizes, next to cp.

  .venv/bin/python bench/scale.py [--sizes 4x16 5x24] [--data bench-data] [--cleanup]

For each size LxE (L decoder layers, E routed experts, every tensor at its real DeepSeek-V3 size,
random bf16 values) it makes the checkpoint once with make_model.py, then under measure.py:
`cp -r` of it, HF -> MaxText with 1 and with 2 workers (the first size only: the two outputs are
compared array by array, slice by slice, and must be identical), and MaxText -> HF back. Prints
MB/s per worker (tensor bytes converted: the MTP layer, which MaxText does not keep, is not
read), the 1 -> 2 worker speed-up and the peak RSS of the largest process, which must not
grow with the model (it is bounded by --max_element_size, 256 MiB).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.convert import BENCH, measure  # pylint: disable=wrong-import-position
from transforms.orbax_layout import NUMPY_DTYPES  # pylint: disable=wrong-import-position
from transforms.orbax_reader import CheckpointReader  # pylint: disable=wrong-import-position
from pipeline.planner import plan_to_maxtext  # pylint: disable=wrong-import-position


def same_checkpoint(a: str, b: str) -> bool:
  """Array by array, about 64 MB of leading-axis rows at a time, so memory stays small."""
  ra, rb = CheckpointReader(a), CheckpointReader(b)
  if ra.paths != rb.paths:
    return False
  for path in ra.paths:
    shape, dtype = ra.spec(path)
    if not shape:
      if not np.array_equal(ra.read(path), rb.read(path)):
        return False
      continue
    row_bytes = max(1, int(np.prod(shape[1:])) * np.dtype(NUMPY_DTYPES.get(dtype, np.float32)).itemsize)
    step = max(1, 64 * 2**20 // row_bytes)
    for start in range(0, shape[0], step):
      index = (slice(start, min(start + step, shape[0])),)
      if not np.array_equal(ra.read(path, index).view(np.uint8), rb.read(path, index).view(np.uint8)):
        print(f"differs: {path} [{start}:{start + step}]")
        return False
  return True


def file_digests(directory: str) -> dict[str, str]:
  digests = {}
  for name in sorted(os.listdir(directory)):
    if name.endswith(".safetensors"):
      h = hashlib.sha256()
      with open(os.path.join(directory, name), "rb") as f:
        for block in iter(lambda: f.read(2**24), b""):
          h.update(block)
      digests[name] = h.hexdigest()
  return digests


def to_maxtext(model: str, out: str, workers: int, results: str, label: str) -> dict:
  return measure(label, [sys.executable, "-m", "pipeline.to_maxtext", f"base_output_directory={out}",
                         f"--hf_model_path={model}", "--progress=false", f"--direct_num_workers={workers}"], results)


def to_huggingface(items: str, model: str, out: str, workers: int, results: str, label: str) -> dict:
  return measure(label, [sys.executable, "-m", "pipeline.to_huggingface", f"load_parameters_path={items}",
                         f"base_output_directory={out}", f"--hf_model_path={model}", "--progress=false",
                         f"--direct_num_workers={workers}"], results)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes", nargs="+", default=["4x16", "5x24"])
  ap.add_argument("--data", default=os.path.join(ROOT, "bench-data"))
  ap.add_argument("--cleanup", action="store_true", help="delete each generated model after its runs (disk)")
  a = ap.parse_args()
  rows = []
  identical = True
  for n, size in enumerate(a.sizes):
    layers, experts = (int(x) for x in size.split("x"))
    model = os.path.join(a.data, f"ds3-{size}")
    if not os.path.exists(os.path.join(model, "config.json")):
      subprocess.run([sys.executable, os.path.join(BENCH, "make_model.py"), "--preset", "deepseek3-671b",
                      "--layers", str(layers), "--experts", str(experts), "--out", model], check=True)
    plan = plan_to_maxtext(model)
    total, largest = plan.source_bytes, max(r.nbytes for t in plan.tasks for r in t.sources)
    with tempfile.TemporaryDirectory(dir=a.data) as tmp:
      results = os.path.join(tmp, "results.jsonl")
      cp = measure(f"cp-{size}", ["cp", "-r", model, os.path.join(tmp, "copy")], results)
      shutil.rmtree(os.path.join(tmp, "copy"))
      runs = {}
      for workers in ((1, 2) if n == 0 else (2,)):
        runs[("to_maxtext", workers)] = to_maxtext(model, os.path.join(tmp, f"mt{workers}"), workers, results,
                                                   f"to_maxtext-{size}-{workers}w")
      if n == 0:
        same = same_checkpoint(os.path.join(tmp, "mt1", "0", "items"), os.path.join(tmp, "mt2", "0", "items"))
        print(f"{size}: 1-worker and 2-worker checkpoints identical: {same}")
        identical &= same
        shutil.rmtree(os.path.join(tmp, "mt1"))
      items = os.path.join(tmp, "mt2", "0", "items")
      digests = []
      for workers in ((1, 2) if n == 0 else (2,)):
        out = os.path.join(tmp, f"hf{workers}")
        runs[("to_huggingface", workers)] = to_huggingface(items, model, out, workers, results,
                                                           f"to_huggingface-{size}-{workers}w")
        digests.append(file_digests(out))
        shutil.rmtree(out)
      if n == 0:
        print(f"{size}: 1-worker and 2-worker safetensors identical: {digests[0] == digests[1]}")
        identical &= digests[0] == digests[1]
    if a.cleanup:
      shutil.rmtree(model)
      for (direction, workers), r in runs.items():
        rows.append((size, direction, workers, total, largest, cp, r))
  print(f"\n{'size':>6} {'direction':>15} {'workers':>7} {'bytes':>9} {'largest':>8} {'cp s':>6} {'s':>7} "
        f"{'MB/s/worker':>11} {'speed-up':>8} {'peak proc MB':>12} {'peak tree MB':>12}")
  for size, direction, workers, total, largest, cp, r in rows:
    one = next((x[6] for x in rows if x[0] == size and x[1] == direction and x[2] == 1), None)
    speedup = f"{one['wall_s'] / r['wall_s']:.2f}x" if one and workers > 1 else ""
    print(f"{size:>6} {direction:>15} {workers:>7} {total / 2**30:8.2f}G {largest / 2**20:7.0f}M {cp['wall_s']:6.1f} "
          f"{r['wall_s']:7.1f} {total / 1e6 / r['wall_s'] / workers:11.0f} {speedup:>8} {r['peak_proc_rss_mb']:12d} "
          f"{r['peak_tree_rss_mb']:12d}{'' if r['rc'] == 0 else '  FAILED'}")
  return 0 if identical and all(r[6]["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
