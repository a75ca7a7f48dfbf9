"""Benchmark both directions against `cp` of the same files, with bench/make_model.py and bench/measure.py.

  .venv/bin/python bench/convert.py [--layers 4 8] [--workers N] [--data bench-data]

For each layer count: makes (once) a random Llama-3.1-8B-shaped checkpoint with make_model.py,
then runs `cp -r`, `python -m pipeline.to_maxtext` and, from its output, `python -m
pipeline.to_huggingface` under measure.py, which samples the RSS of the whole process tree.
Prints wall time, peak RSS of the largest process and of the tree, and checks each process
against the budget 2 x largest tensor + 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from transforms.safetensors_io import list_checkpoint  # pylint: disable=wrong-import-position


def measure(label: str, cmd: list[str], results: str) -> dict:
  subprocess.run([sys.executable, os.path.join(BENCH, "measure.py"), "--label", label, "--json", results,
                  "--", *cmd], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
  with open(results) as f:
    return json.loads(f.read().strip().splitlines()[-1])


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
  ap.add_argument("--preset", default="llama3.1-8b")
  ap.add_argument("--data", default=os.path.join(ROOT, "bench-data"))
  ap.add_argument("--workers", type=int, default=0, help="--direct_num_workers (default: one per CPU)")
  ap.add_argument("--extra", nargs="*", default=[], help="more to_maxtext arguments, e.g. scan_layers=false")
  a = ap.parse_args()
  rows = []
  for layers in a.layers:
    model = os.path.join(a.data, f"{a.preset}-{layers}l")
    if not os.path.exists(os.path.join(model, "config.json")):
      subprocess.run([sys.executable, os.path.join(BENCH, "make_model.py"), "--preset", a.preset,
                      "--layers", str(layers), "--out", model], check=True)
    tensors = list_checkpoint(model)
    largest = max(t.nbytes for t in tensors.values())
    total = sum(t.nbytes for t in tensors.values())
    budget_mb = (2 * largest + 1.5e9) / 2**20
    with tempfile.TemporaryDirectory(dir=a.data) as tmp:
      results = os.path.join(tmp, "results.jsonl")
      subprocess.run(["sync"], check=False)
      cp = measure(f"cp-{layers}l", ["cp", "-r", model, os.path.join(tmp, "copy")], results)
      shutil.rmtree(os.path.join(tmp, "copy"))
      subprocess.run(["sync"], check=False)
      workers = [f"--direct_num_workers={a.workers}"] if a.workers else []
      to_mt = measure(f"to_maxtext-{layers}l", [
          sys.executable, "-m", "pipeline.to_maxtext", f"base_output_directory={os.path.join(tmp, 'mt')}",
          f"--hf_model_path={model}", "--progress=false", *workers, *a.extra], results)
      subprocess.run(["sync"], check=False)
      to_hf = measure(f"to_huggingface-{layers}l", [
          sys.executable, "-m", "pipeline.to_huggingface", f"load_parameters_path={os.path.join(tmp, 'mt', '0', 'items')}",
          f"base_output_directory={os.path.join(tmp, 'hf')}", f"--hf_model_path={model}", "--progress=false",
          *workers], results)
    for label, ours in (("to_maxtext", to_mt), ("to_huggingface", to_hf)):
      ok = ours["rc"] == 0 and ours["peak_proc_rss_mb"] < budget_mb
      rows.append((layers, label, total, largest, cp, ours, budget_mb, ok))
  print(f"\n{'model':>16} {'direction':>15} {'bytes':>9} {'largest':>8} {'cp s':>6} {'ckptflow s':>10} {'MB/s':>6} "
        f"{'peak proc MB':>12} {'peak tree MB':>12} {'budget MB':>9}")
  for layers, label, total, largest, cp, ours, budget_mb, ok in rows:
    print(f"{a.preset + '-' + str(layers) + 'l':>16} {label:>15} {total / 2**30:8.2f}G {largest / 2**20:7.0f}M "
          f"{cp['wall_s']:6.1f} {ours['wall_s']:10.1f} {total / 1e6 / ours['wall_s']:6.0f} "
          f"{ours['peak_proc_rss_mb']:12d} {ours['peak_tree_rss_mb']:12d} {budget_mb:9.0f} "
          f"{'ok' if ok else 'OVER BUDGET'}")
  return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
