"""MaxText -> MaxText re-layout (scanned -> unscanned) next to `cp -r` of the same checkpoint.

  .venv/bin/python bench/relayout.py [--data bench-data] [--only llama|deepseek] [--extra ...]

Two real-dimension checkpoints, each made once (bench/make_model.py, then to_maxtext, scanned, into
--data): Llama-3.1-8B with 4 layers, and a DeepSeek-V3 slice (4 layers x 16 routed experts, every
tensor at its real size). For each, under bench/measure.py: `cp -r` of the checkpoint directory,
then `python -m pipeline.to_maxtext load_parameters_path=<it>/0/items scan_layers=false` (the
local runner, 1 and 2 workers for DeepSeek: the two outputs are compared array by array and must be
identical). Prints wall time against cp (target: within 1.5x) and the peak RSS of the largest
process against 2 x the largest tensor + 1.5 GB. Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.convert import BENCH, measure  # pylint: disable=wrong-import-position
from bench.scale import same_checkpoint  # pylint: disable=wrong-import-position
from pipeline.planner import plan_to_maxtext  # pylint: disable=wrong-import-position
from transforms.orbax_reader import CheckpointReader  # pylint: disable=wrong-import-position

MODELS = {"llama": ("llama3.1-8b-4l", ["--preset", "llama3.1-8b", "--layers", "4"], (2,)),
          "deepseek": ("ds3-4x16", ["--preset", "deepseek3-671b", "--layers", "4", "--experts", "16"], (1, 2))}
TIME_FACTOR = 1.5


def scanned_checkpoint(data: str, name: str, make_args: list[str]) -> tuple[str, str, int]:
  """(HF model dir, scanned MaxText checkpoint dir, largest tensor bytes), made once."""
  hf = os.path.join(data, name)
  if not os.path.exists(os.path.join(hf, "config.json")):
    subprocess.run([sys.executable, os.path.join(BENCH, "make_model.py"), *make_args, "--out", hf], check=True)
  mt = os.path.join(data, f"{name}-maxtext-scan")
  if not os.path.exists(os.path.join(mt, "0", "commit_success.txt")):
    shutil.rmtree(mt, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pipeline.to_maxtext", f"base_output_directory={mt}", f"--hf_model_path={hf}",
                    "scan_layers=true", "--progress=false"], check=True, cwd=ROOT)
  largest = max(r.nbytes for t in plan_to_maxtext(hf).tasks for r in t.sources)
  return hf, mt, largest


def same_arrays(a: str, b: str) -> bool:
  """Array by array: equal metadata and stored chunk bytes (so equal values); an array whose stored
  bytes differ is compared by value (bench/scale.py's same_checkpoint, block by block)."""
  ra, rb = CheckpointReader(a), CheckpointReader(b)
  if ra.paths != rb.paths:
    return False
  for path in ra.paths:
    sa, sb = ra.array(path), rb.array(path)
    if sa.spec().to_json()["metadata"] != sb.spec().to_json()["metadata"]:
      return False
    ka, kb = sa.kvstore, sb.kvstore
    keys = sorted(ka.list().result())
    same = keys == sorted(kb.list().result())
    for start in range(0, len(keys), 8):  # a few chunks at a time: memory stays small
      batch = keys[start:start + 8]
      pairs = [(ka.read(k), kb.read(k)) for k in batch] if same else []
      same = same and all(x.result().value == y.result().value for x, y in pairs)
    if not same:
      print(f"{path}: stored bytes differ; comparing values")
      return same_checkpoint(a, b)
  return True


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=os.path.join(ROOT, "bench-data"))
  ap.add_argument("--only", choices=sorted(MODELS), action="append")
  ap.add_argument("--extra", nargs="*", default=[], help="more to_maxtext arguments, e.g. --direct_running_mode=...")
  a = ap.parse_args()
  os.makedirs(a.data, exist_ok=True)
  rows, ok = [], True
  for key in a.only or sorted(MODELS, reverse=True):
    name, make_args, worker_counts = MODELS[key]
    hf, source, largest = scanned_checkpoint(a.data, name, make_args)
    budget_mb = (2 * largest + 1.5e9) / 2**20
    with tempfile.TemporaryDirectory(dir=a.data) as tmp:
      results = os.path.join(tmp, "results.jsonl")
      subprocess.run(["sync"], check=False)
      cp = measure(f"cp-{name}", ["cp", "-r", source, os.path.join(tmp, "copy")], results)
      shutil.rmtree(os.path.join(tmp, "copy"))
      outputs = []
      for workers in worker_counts:
        out = os.path.join(tmp, f"unscan-{workers}w")
        subprocess.run(["sync"], check=False)
        run = measure(f"relayout-{name}-{workers}w", [
            sys.executable, "-m", "pipeline.to_maxtext", f"load_parameters_path={os.path.join(source, '0', 'items')}",
            f"base_output_directory={out}", f"--hf_model_path={hf}", "scan_layers=false", "--progress=false",
            f"--direct_num_workers={workers}", *a.extra], results)
        fits = run["rc"] == 0 and run["peak_proc_rss_mb"] < budget_mb and run["wall_s"] <= TIME_FACTOR * cp["wall_s"]
        rows.append((name, workers, du(source), largest, cp, run, budget_mb, fits))
        ok &= fits
        outputs.append(os.path.join(out, "0", "items"))
      if len(outputs) == 2:
        same = same_arrays(*outputs)
        print(f"{name}: 1-worker and 2-worker checkpoints identical: {same}")
        ok &= same
  print(f"\n{'checkpoint':>18} {'workers':>7} {'files':>8} {'largest':>8} {'cp s':>6} {'relayout s':>10} {'x cp':>5} "
        f"{'peak proc MB':>12} {'peak tree MB':>12} {'budget MB':>9}")
  for name, workers, size, largest, cp, run, budget_mb, fits in rows:
    print(f"{name:>18} {workers:>7} {size / 2**30:7.2f}G {largest / 2**20:7.0f}M {cp['wall_s']:6.1f} "
          f"{run['wall_s']:10.1f} {run['wall_s'] / cp['wall_s']:5.2f} {run['peak_proc_rss_mb']:12d} "
          f"{run['peak_tree_rss_mb']:12d} {budget_mb:9.0f} {'ok' if fits else 'MISSED'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
