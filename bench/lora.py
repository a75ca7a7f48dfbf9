"""Benchmark LoRA conversions next to the plain ones, on an 8B-shaped base, with bench/measure.py.

  .venv/bin/python bench/lora.py [--layers 4] [--rank 16] [--workers N] [--data bench-data]

Makes (once) a random Llama-3.1-8B-shaped checkpoint (bench/make_model.py) and a rank-r adapter on all
seven projections of every layer (bench/make_adapter.py), then measures wall time and peak RSS of:
to_maxtext plain, merged (--merge_lora: every adapted weight W + (alpha/r) B A in float32 from its own
base tensor) and adapter-only; to_huggingface plain, merged (lora.lora_restore_path) and adapter-only.
Each process must stay under 2 x the largest tensor + 1.5 GB; exits non-zero if one does not.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [ROOT, BENCH]

from convert import measure  # pylint: disable=wrong-import-position
from transforms.safetensors_io import list_checkpoint  # pylint: disable=wrong-import-position


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--preset", default="llama3.1-8b")
  ap.add_argument("--data", default=os.path.join(ROOT, "bench-data"))
  ap.add_argument("--workers", type=int, default=0, help="--direct_num_workers (default: one per CPU)")
  a = ap.parse_args()
  model = os.path.join(a.data, f"{a.preset}-{a.layers}l")
  adapter = os.path.join(a.data, f"{a.preset}-{a.layers}l-lora{a.rank}")
  if not os.path.exists(os.path.join(model, "config.json")):
    subprocess.run([sys.executable, os.path.join(BENCH, "make_model.py"), "--preset", a.preset, "--layers",
                    str(a.layers), "--out", model], check=True)
  if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
    subprocess.run([sys.executable, os.path.join(BENCH, "make_adapter.py"), "--base", model, "--out", adapter,
                    "--rank", str(a.rank)], check=True)
  tensors = list_checkpoint(model)
  largest = max(t.nbytes for t in tensors.values())
  total = sum(t.nbytes for t in tensors.values())
  budget_mb = (2 * largest + 1.5e9) / 2**20
  workers = [f"--direct_num_workers={a.workers}"] if a.workers else []
  common = ["--progress=false", *workers]
  rows = []
  with tempfile.TemporaryDirectory(dir=a.data) as tmp:
    results = os.path.join(tmp, "results.jsonl")

    def run(label, module, *args):
      subprocess.run(["sync"], check=False)
      rows.append((label, measure(label, [sys.executable, "-m", module, *args, *common], results)))

    mt, merged, mt_adapter = (os.path.join(tmp, n) for n in ("mt", "merged", "mt_adapter"))
    run("to_maxtext plain", "pipeline.to_maxtext", f"base_output_directory={mt}", f"--hf_model_path={model}")
    run("to_maxtext merged", "pipeline.to_maxtext", f"base_output_directory={merged}", f"--hf_model_path={model}",
        f"hf_lora_adapter_path={adapter}", "--merge_lora")
    run("to_maxtext adapter", "pipeline.to_maxtext", f"base_output_directory={mt_adapter}",
        f"--hf_model_path={model}", f"hf_lora_adapter_path={adapter}")
    adapter_items = os.path.join(mt_adapter, os.path.basename(adapter), "0", "items")
    items = os.path.join(mt, "0", "items")
    run("to_huggingface plain", "pipeline.to_huggingface", f"load_parameters_path={items}",
        f"base_output_directory={os.path.join(tmp, 'hf')}", f"--hf_model_path={model}")
    run("to_huggingface merged", "pipeline.to_huggingface", f"load_parameters_path={items}",
        f"lora.lora_restore_path={adapter_items}", f"base_output_directory={os.path.join(tmp, 'hf_merged')}",
        f"--hf_model_path={model}")
    run("to_huggingface adapter", "pipeline.to_huggingface", f"lora.lora_restore_path={adapter_items}",
        f"base_output_directory={os.path.join(tmp, 'hf_adapter')}", f"--hf_model_path={model}")
  print(f"\n{a.preset}, {a.layers} layers: {total / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB, "
        f"LoRA rank {a.rank} on all 7 projections; budget per process {budget_mb:.0f} MB")
  print(f"{'conversion':>24} {'wall s':>7} {'peak proc MB':>12} {'peak tree MB':>12}")
  ok = True
  for label, result in rows:
    fits = result["rc"] == 0 and result["peak_proc_rss_mb"] < budget_mb
    ok &= fits
    print(f"{label:>24} {result['wall_s']:7.1f} {result['peak_proc_rss_mb']:12d} {result['peak_tree_rss_mb']:12d} "
          f"{'ok' if fits else 'OVER BUDGET' if result['rc'] == 0 else 'FAILED'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
