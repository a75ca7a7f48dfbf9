"""The README's first command: make a small Llama-3.1-shaped model, convert it to MaxText with
the local runner (scanned and unscanned), check every array against its source, convert each
checkpoint back to HF and compare with the original.

  python -m pipeline.demo [--workdir DIR] [--layers N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_dtypes
import numpy as np

import models
from pipeline import cli, to_huggingface_job, to_maxtext_job
from pipeline.planner import plan_to_maxtext
from transforms.dofns import convert_slice
from transforms.orbax_reader import CheckpointReader
from transforms.orbax_layout import NUMPY_DTYPES, region
from transforms.safetensors_io import list_checkpoint, read_tensor, write_safetensors
from transforms.tensor_ops import axes_shape

DEMO_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 688, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
    "num_hidden_layers": 4, "vocab_size": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
}


def make_model(model_dir: str, config: dict, seed: int = 0) -> None:
  """A random bf16 checkpoint of `config`'s family with exactly the tensors its spec expects."""
  family = models.BY_ARCHITECTURE[config["architectures"][0]]
  sizes = family.sizes(config)
  rng = np.random.default_rng(seed)
  tensors = {}
  for param in family.params:
    if not param.applies(config):
      continue
    for layer in range(sizes["layers"]) if param.layered else [None]:
      shape = axes_shape(param.hf_axes, sizes)
      tensors[param.hf.format(layer=layer)] = (rng.standard_normal(shape) * 0.05).astype(ml_dtypes.bfloat16)
  os.makedirs(model_dir, exist_ok=True)
  write_safetensors(os.path.join(model_dir, "model.safetensors"), tensors, {"format": "pt"})
  with open(os.path.join(model_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)


def verify(hf_dir: str, items: str, scan_layers: bool) -> int:
  """Re-reads every slice of the checkpoint and compares it bit for bit with its converted source."""
  plan = plan_to_maxtext(hf_dir, scan_layers=scan_layers)
  family = models.BY_NAME[plan.family]
  reader = CheckpointReader(items)
  for task in plan.tasks:
    expected = convert_slice(task, family.param(task.param), plan.sizes)[0]
    expected = np.ascontiguousarray(expected, NUMPY_DTYPES[task.array.dtype])
    got = reader.read(task.array.path, region(len(task.array.shape), task.index, task.window))
    if got.shape != expected.shape or not np.array_equal(got.view(np.uint8), expected.view(np.uint8)):
      raise SystemExit(f"MISMATCH in {task.array.path} {task.index}")
  return len(plan.tasks)


def compare_models(original_dir: str, converted_dir: str) -> tuple[int, int]:
  """(bit-identical tensors, tensors one bf16 rounding off); raises if any is further off."""
  original, converted = list_checkpoint(original_dir), list_checkpoint(converted_dir)
  if sorted(original) != sorted(converted):
    raise SystemExit(f"MISMATCH: tensor names differ: {sorted(set(original) ^ set(converted))[:3]}")
  same = rounded = 0
  for name, ref in original.items():
    a, b = read_tensor(ref), read_tensor(converted[name])
    if a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)):
      same += 1
      continue
    wide_a, wide_b = a.astype(np.float64), b.astype(np.float64)
    if not np.all(np.abs(wide_a - wide_b) <= np.abs(wide_a) * 2.0**-7):
      raise SystemExit(f"MISMATCH in {name}")
    rounded += 1
  return same, rounded


def main(argv: list[str]) -> int:
  parser = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="demo-out", help="where the model and its conversions go")
  parser.add_argument("--layers", type=int, default=DEMO_CONFIG["num_hidden_layers"],
                      help=f"decoder layers of the demo model (default {DEMO_CONFIG['num_hidden_layers']})")
  args = parser.parse_args(argv)
  hf_dir = os.path.join(args.workdir, "hf")
  make_model(hf_dir, {**DEMO_CONFIG, "num_hidden_layers": args.layers})
  print(f"made a {args.layers}-layer Llama-3.1-shaped model in {hf_dir}")
  for scan in (True, False):
    out = os.path.join(args.workdir, "maxtext_scan" if scan else "maxtext_unscan")
    start = time.monotonic()
    to_maxtext_job.main([f"base_output_directory={out}", f"scan_layers={scan}", f"--hf_model_path={hf_dir}",
                     "--overwrite"])
    items = os.path.join(out, "0", "items")
    checked = verify(hf_dir, items, scan)
    print(f"scan_layers={scan}: {checked} slices bit-exact in {items} ({time.monotonic() - start:.1f}s)")
    back = os.path.join(args.workdir, "hf_from_scan" if scan else "hf_from_unscan")
    start = time.monotonic()
    to_huggingface_job.main([f"load_parameters_path={items}", f"base_output_directory={back}",
                         f"--hf_model_path={hf_dir}", "--overwrite"])
    same, rounded = compare_models(hf_dir, back)
    print(f"back to HF: {same} tensors bit-identical to the original, {rounded} within one bf16 rounding "
          f"(the rescaled query) in {back} ({time.monotonic() - start:.1f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
