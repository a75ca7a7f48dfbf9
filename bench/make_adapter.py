#!/usr/bin/env python3
"""Write a random PEFT LoRA adapter for a Hugging Face checkpoint (e.g. one bench/make_model.py made), for benchmarks.

  python bench/make_adapter.py --base bench-data/llama3.1-8b-4l --out bench-data/llama3.1-8b-4l-lora16 --rank 16

adapter_config.json + adapter_model.safetensors as PEFT saves them (float32 factors, names
`base_model.model.<module>.lora_{A,B}.weight`), on every decoder layer's --targets projections, with
B non-zero (a trained adapter, not PEFT's initial B = 0). Reads only the base's headers and config.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from transforms.safetensors_io import list_checkpoint, write_safetensors  # pylint: disable=wrong-import-position

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--base", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--alpha", type=float, default=32)
  ap.add_argument("--targets", default=TARGETS)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  targets = a.targets.split(",")
  pattern = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(map(re.escape, targets)) + r")\.weight")
  rng = np.random.default_rng(a.seed)
  factors = {}
  for name, ref in sorted(list_checkpoint(a.base).items()):
    if not pattern.fullmatch(name):
      continue
    out, inputs = ref.shape
    stem = "base_model.model." + name.removesuffix(".weight")
    factors[stem + ".lora_A.weight"] = (rng.standard_normal((a.rank, inputs)) / np.sqrt(inputs)).astype(np.float32)
    factors[stem + ".lora_B.weight"] = (rng.standard_normal((out, a.rank)) * 0.01).astype(np.float32)
  if not factors:
    raise SystemExit(f"{a.base}: no tensor matches --targets {a.targets}")
  os.makedirs(a.out, exist_ok=True)
  write_safetensors(os.path.join(a.out, "adapter_model.safetensors"), factors)
  config = {"base_model_name_or_path": os.path.abspath(a.base), "peft_type": "LORA", "task_type": "CAUSAL_LM",
            "r": a.rank, "lora_alpha": a.alpha, "target_modules": targets, "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "inference_mode": True, "use_dora": False, "use_rslora": False}
  with open(os.path.join(a.out, "adapter_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  total = sum(v.nbytes for v in factors.values())
  print(f"{len(factors)} factors, {total / 2**20:.1f} MiB, rank {a.rank} -> {a.out}")


if __name__ == "__main__":
  main()
