"""Issue 18's benchmark: fixed cost, marginal cost against `cp -r` + `sync`, MaxText, peak memory.

  bash bench/run.sh                       # = .venv/bin/python bench/convert.py
  .venv/bin/python bench/convert.py [--layers 4 8] [--repeat 2] [--extra scan_layers=false ...]

Side by side in one run, with the source files warm in the page cache:
- the tiny qwen3 golden (tests/data/goldens/qwen3/hf), both ways: the fixed cost, process start to exit;
- for each layer count, a random Llama-3.1-8B-shaped checkpoint (made once by make_model.py into
  bench-data/): `cp -r` of its files + `sync` (the faster of two), then `python -m pipeline.to_maxtext`
  and, from its output (read once first: to_maxtext leaves it out of the page cache, and a cold read
  from this disk would time the disk), `python -m pipeline.to_huggingface`, each under measure.py (peak RSS of the
  largest process and of the whole tree, sampled every 50 ms).
The marginal cost is the 8B time minus the tiny time of the same direction; its ratio to cp is the goal
(<= 1.5x). MaxText's own converter is not installed here: its times are those measured for the issue on
this machine kind (the 4-layer model, 84.4 s and 60.2 s), shown for the speed-up (goal >= 8x). Each
process must stay under 2 x the largest tensor + 1.5 GB; the script exits 1 if one does not.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from transforms.safetensors_io import list_checkpoint  # pylint: disable=wrong-import-position

TINY = os.path.join(ROOT, "tests", "data", "goldens", "qwen3", "hf")
# MaxText's converter on the 4-layer 8B-shaped model (issue 18's table, 2 cores, 24 GB).
MAXTEXT_SECONDS = {"to_maxtext": 84.4, "to_huggingface": 60.2}


def measure(label: str, cmd: list[str], results: str) -> dict:
  subprocess.run([sys.executable, os.path.join(BENCH, "measure.py"), "--label", label, "--json", results,
                  "--", *cmd], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
  with open(results) as f:
    return json.loads(f.read().strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
  return min(runs, key=lambda r: r["wall_s"])


def convert_both_ways(model: str, tmp: str, label: str, results: str, repeat: int, extra: list[str],
                      workers: list[str]) -> tuple[dict, dict]:
  """(to_maxtext, to_huggingface) measurements, the faster of `repeat` runs each."""
  mt, hf = os.path.join(tmp, f"{label}-mt"), os.path.join(tmp, f"{label}-hf")
  to_mt, to_hf = [], []
  for _ in range(repeat):
    shutil.rmtree(mt, ignore_errors=True)  # a new output each time, not --overwrite's removal of the last
    warm(model)
    subprocess.run(["sync"], check=False)
    to_mt.append(measure(f"to_maxtext-{label}", [
        sys.executable, "-m", "pipeline.to_maxtext", f"base_output_directory={mt}", f"--hf_model_path={model}",
        "--progress=false", *workers, *extra], results))
    subprocess.run(["sync"], check=False)
    shutil.rmtree(hf, ignore_errors=True)
    warm(mt)  # to_maxtext dropped its output from the page cache on the way to disk
    to_hf.append(measure(f"to_huggingface-{label}", [
        sys.executable, "-m", "pipeline.to_huggingface", f"load_parameters_path={os.path.join(mt, '0', 'items')}",
        f"base_output_directory={hf}", "--progress=false", *workers], results))
  shutil.rmtree(mt, ignore_errors=True)
  shutil.rmtree(hf, ignore_errors=True)
  return best(to_mt), best(to_hf)


def copy_seconds(model: str, tmp: str, results: str) -> float:
  """`cp -r` + `sync` of the model's files, the faster of two."""
  walls = []
  for _ in range(2):
    subprocess.run(["sync"], check=False)
    copy = os.path.join(tmp, "copy")
    walls.append(measure("cp", ["sh", "-c", f"cp -r '{model}' '{copy}' && sync"], results)["wall_s"])
    shutil.rmtree(copy)
  return min(walls)


def warm(tree: str) -> None:
  """Reads every file under `tree` once, so that a conversion starts from warm source files."""
  for folder, _, names in os.walk(tree):
    for name in names:
      with open(os.path.join(folder, name), "rb") as f:
        while f.read(64 * 2**20):
          pass


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
  ap.add_argument("--preset", default="llama3.1-8b")
  ap.add_argument("--data", default=os.path.join(ROOT, "bench-data"))
  ap.add_argument("--repeat", type=int, default=1, help="runs of each conversion; the faster counts")
  ap.add_argument("--workers", type=int, default=0, help="--direct_num_workers (default: one per CPU)")
  ap.add_argument("--mode", default="", help="--direct_running_mode (default: ckptflow's choice)")
  ap.add_argument("--extra", nargs="*", default=[], help="more to_maxtext arguments, e.g. scan_layers=false")
  a = ap.parse_args()
  workers = ([f"--direct_num_workers={a.workers}"] if a.workers else []) + (
      [f"--direct_running_mode={a.mode}"] if a.mode else [])
  os.makedirs(a.data, exist_ok=True)
  rows, ok = [], True
  with tempfile.TemporaryDirectory(dir=a.data) as tmp:
    results = os.path.join(tmp, "results.jsonl")
    tiny = convert_both_ways(TINY, tmp, "tiny", results, max(a.repeat, 2), [], workers)
    for layers in a.layers:
      model = os.path.join(a.data, f"{a.preset}-{layers}l")
      if not os.path.exists(os.path.join(model, "config.json")):
        subprocess.run([sys.executable, os.path.join(BENCH, "make_model.py"), "--preset", a.preset,
                        "--layers", str(layers), "--out", model], check=True)
      tensors = list_checkpoint(model)
      largest = max(t.nbytes for t in tensors.values())
      total = sum(t.nbytes for t in tensors.values())
      budget_mb = (2 * largest + 1.5e9) / 2**20
      warm(model)
      cp = copy_seconds(model, tmp, results)
      ours = convert_both_ways(model, tmp, f"{layers}l", results, a.repeat, a.extra, workers)
      for direction, run, fixed in zip(("to_maxtext", "to_huggingface"), ours, tiny):
        within = run["rc"] == 0 and run["peak_proc_rss_mb"] < budget_mb
        ok = ok and within
        rows.append((f"{a.preset}-{layers}l", direction, total, cp, run, fixed, budget_mb, within, layers))
  print(f"\nmachine: {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.platform()}, Python {platform.python_version()}")
  print(f"fixed cost (tiny qwen3 golden, process start to exit): to_maxtext {tiny[0]['wall_s']:.2f} s, "
        f"to_huggingface {tiny[1]['wall_s']:.2f} s (goal 2.5 s)\n")
  print("| model | direction | GiB | cp -r + sync s | ckptflow s | marginal s | marginal / cp | MaxText s | speed-up "
        "| peak process MB | peak tree MB | budget MB |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for model, direction, total, cp, run, fixed, budget_mb, within, layers in rows:
    marginal = run["wall_s"] - fixed["wall_s"]
    maxtext = MAXTEXT_SECONDS[direction] if layers == 4 and model.startswith("llama3.1-8b") else None
    speedup = f"{maxtext / run['wall_s']:.1f}x" if maxtext else "-"
    print(f"| {model} | {direction} | {total / 2**30:.2f} | {cp:.1f} | {run['wall_s']:.1f} | {marginal:.1f} | "
          f"{marginal / cp:.2f}x | {maxtext or '-'} | {speedup} | {run['peak_proc_rss_mb']} | "
          f"{run['peak_tree_rss_mb']} | {budget_mb:.0f}{'' if within else ' OVER'} |")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
