"""The README's first command: make a small Llama-3.1-shaped model, convert it to MaxText with
the local runner (scanned and unscanned), check each checkpoint with Orbax's own restore (every
slice bit for bit against its converted source), convert it back to HF (the scanned one with
--hf_model_path, the unscanned one from what its manifest carries), and check the way back with
transformers' from_pretrained (no missing or unexpected keys) and its logits against the original's.

  python -m pipeline.demo [--workdir DIR] [--layers N]

Orbax, torch and transformers are in the `test` extra, which scripts/venv.sh installs.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the imports: it may restart the process
  from pipeline import hugepages
  hugepages.use()

import argparse
import json
import os
import time

import ml_dtypes
import numpy as np

import models
from pipeline import cli, to_huggingface_job, to_maxtext_job
from pipeline.planner import plan_to_maxtext
from transforms.dofns import convert_slice
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


def orbax_restore(items: str) -> dict[str, np.ndarray]:
  """The checkpoint as Orbax itself restores it: {'params/params/decoder/...': array}."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit("the demo checks with orbax-checkpoint: pip install -e '.[test]' (scripts/venv.sh does)") from None
  flat: dict[str, np.ndarray] = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for key, value in node.items():
        walk(value, (*prefix, str(key)))
    else:
      flat["/".join(prefix)] = np.asarray(node)
  walk(ocp.PyTreeCheckpointer().restore(os.path.abspath(items)), ())
  return flat


def verify(hf_dir: str, items: str, scan_layers: bool, restored: dict[str, np.ndarray] | None = None) -> int:
  """Compares every slice of the checkpoint, as Orbax restores it, bit for bit with its converted source."""
  plan = plan_to_maxtext(hf_dir, scan_layers=scan_layers)
  family = models.BY_NAME[plan.family]
  restored = orbax_restore(items) if restored is None else restored
  for task in plan.tasks:
    expected = convert_slice(task, family.param(task.param), plan.sizes)[0]
    expected = np.ascontiguousarray(expected, NUMPY_DTYPES[task.array.dtype])
    array = restored.get(task.array.path)
    if array is None:
      raise SystemExit(f"MISMATCH: Orbax restored no {task.array.path} from {items}")
    got = np.ascontiguousarray(array[region(len(task.array.shape), task.index, task.window)])
    if got.shape != expected.shape or not np.array_equal(got.view(np.uint8), expected.view(np.uint8)):
      raise SystemExit(f"MISMATCH in {task.array.path} {task.index}")
  return len(plan.tasks)


def compare_logits(original_dir: str, converted_dir: str, vocab_size: int) -> float:
  """Loads both with transformers' from_pretrained (the converted one must fit the model exactly) and
  returns the largest logit difference over a few token sequences, relative to the largest logit."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit("the demo checks with torch and transformers: pip install -e '.[test]' (scripts/venv.sh does)"
                     ) from None
  converted, info = transformers.AutoModelForCausalLM.from_pretrained(converted_dir, dtype=torch.float32,
                                                                      output_loading_info=True)
  wrong = {k: sorted(v)[:3] for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
  if wrong:
    raise SystemExit(f"MISMATCH: transformers loads {converted_dir} with {wrong}")
  original = transformers.AutoModelForCausalLM.from_pretrained(original_dir, dtype=torch.float32)
  ids = torch.tensor(np.random.default_rng(0).integers(0, vocab_size, size=(2, 64)))
  with torch.no_grad():
    a, b = converted.eval()(ids).logits, original.eval()(ids).logits
  return float(torch.max(torch.abs(a - b)) / torch.max(torch.abs(b)))


# The query is rescaled by 1/sqrt(head_dim) and rounded to bf16 on the way in: the way back's logits
# may differ from the original's by about that rounding, never by more than this share of the largest.
LOGIT_TOLERANCE = 0.05


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
    print(f"scan_layers={scan}: Orbax restores {items}; {checked} slices bit-exact ({time.monotonic() - start:.1f}s)")
    back = os.path.join(args.workdir, "hf_from_scan" if scan else "hf_from_unscan")
    start = time.monotonic()
    # The unscanned way back has no --hf_model_path: its config.json travels in the checkpoint's manifest.
    given = [f"--hf_model_path={hf_dir}"] if scan else []
    to_huggingface_job.main([f"load_parameters_path={items}", f"base_output_directory={back}", *given, "--overwrite"])
    same, rounded = compare_models(hf_dir, back)
    print(f"back to HF{'' if scan else ' (no --hf_model_path)'}: {same} tensors bit-identical to the original, "
          f"{rounded} within one bf16 rounding (the rescaled query) in {back} ({time.monotonic() - start:.1f}s)")
    difference = compare_logits(hf_dir, back, DEMO_CONFIG["vocab_size"])
    if difference > LOGIT_TOLERANCE:
      raise SystemExit(f"MISMATCH: logits of {back} differ from the original's by {difference:.3g} of the largest")
    print(f"transformers loads {back} with no missing or unexpected keys; logits within {difference:.2e} of the "
          "original's (relative to the largest)")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
