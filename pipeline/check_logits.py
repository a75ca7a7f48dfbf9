"""Forward-pass check: the HF model and the converted MaxText checkpoint on the same prompts.

  python -m pipeline.check_logits load_parameters_path=<dir>/0/items model_name=llama3.1-8b \\
      --hf_model_path=DIR [--run_hf_model=true] [--max_kl_div=0.01] [--golden_logits_path=F.jsonl]

Prints per prompt the top-k tokens of both models at the last position, their overlap, Jaccard
similarity and rank agreement, and the average and maximum per-token KL(P_hf || Q_converted);
exits 1 when the maximum exceeds --max_kl_div.

The converted side runs MaxText's own model on the checkpoint when `maxtext` is importable
(--backend=maxtext; MaxText-only key=value overrides such as per_device_batch_size=1 are passed to
its config), else streams the checkpoint through ckptflow's own inverse conversion into an
in-memory HF model (--backend=ckptflow; torch + transformers: `pip install -e .[verify]`). The
reference side runs the HF model from --hf_model_path, or reads logits saved with
--save_golden_logits (JSON lines: prompt, tokens, logits).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

import models
from pipeline import cli
from transforms.errors import ConversionError
from pipeline.options import str2bool
from pipeline.plan_hf import plan_to_huggingface, target_config
from transforms import storage
from transforms.orbax_reader import CheckpointReader
from transforms.safetensors_io import HF_FILE_METADATA, SafetensorsWriter
from transforms.shard_dofns import hf_tensors

# A short prompt barely rotates: RoPE at position 0 is the identity. The long one (about 400
# tokens on a Llama tokenizer) makes position-dependent mistakes show in the logits.
_PASSAGE = ("A lighthouse keeper on a rocky northern island logs the weather every three hours, trims the "
            "lamp wick at dusk, and rows to the mainland once a fortnight for oil, flour and letters. ")
LONG_PROMPT = _PASSAGE * 8 + "\nAccording to the passage, the keeper rows to the mainland to fetch"
DEFAULT_PROMPTS = ("I love to", "Today is a", "What is the", LONG_PROMPT)
MAXTEXT_KEYS = ("load_parameters_path", "model_name", "scan_layers", "max_prefill_predict_length",
                "max_target_length", "hf_model_path")


@dataclasses.dataclass(frozen=True)
class Comparison:
  """How close two models' next-token distributions are on one prompt."""
  prompt: str
  kl_per_token: np.ndarray
  top_ref: list[tuple[int, float]]
  top_ours: list[tuple[int, float]]

  @property
  def overlap(self) -> int:
    return len({t for t, _ in self.top_ref} & {t for t, _ in self.top_ours})

  @property
  def jaccard(self) -> float:
    union = {t for t, _ in self.top_ref} | {t for t, _ in self.top_ours}
    return self.overlap / len(union)

  @property
  def rank_agreement(self) -> float:
    return sum(a == b for (a, _), (b, _) in zip(self.top_ref, self.top_ours)) / len(self.top_ref)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  x = logits.astype(np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, our_logits: np.ndarray) -> np.ndarray:
  """KL(P || Q) per position, P from the reference logits, Q from ours; shapes [tokens, vocab]."""
  log_p, log_q = log_softmax(ref_logits), log_softmax(our_logits)
  return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
  probs = np.exp(log_softmax(logits))
  order = np.argsort(-probs, kind="stable")[:k]
  return [(int(i), float(probs[i])) for i in order]


def compare(prompt: str, ref_logits: np.ndarray, our_logits: np.ndarray, k: int) -> Comparison:
  return Comparison(prompt, kl_divergence(ref_logits, our_logits), top_k(ref_logits[-1], k),
                    top_k(our_logits[-1], k))


def report(c: Comparison, decode) -> str:
  shown = c.prompt if len(c.prompt) <= 60 else c.prompt[:57] + "..."
  lines = [f"prompt {shown!r} ({len(c.kl_per_token)} tokens)",
           f"  {'rank':>4}  {'hf token':>24} {'p':>8}   {'converted token':>24} {'q':>8}"]
  for rank, ((a, pa), (b, pb)) in enumerate(zip(c.top_ref, c.top_ours), 1):
    lines.append(f"  {rank:>4}  {decode(a):>24} {pa:8.4f}   {decode(b):>24} {pb:8.4f}")
  lines.append(f"  top-{len(c.top_ref)} overlap {c.overlap}/{len(c.top_ref)}, Jaccard {c.jaccard:.3f}, "
               f"rank agreement {c.rank_agreement:.3f}, KL avg {c.kl_per_token.mean():.3e} "
               f"max {c.kl_per_token.max():.3e}")
  return "\n".join(lines)


def converted_model(items: str, config: dict[str, Any], where: str, model_name: str | None,
                    scan_layers: bool | None):
  """An HF model whose weights stream from the MaxText checkpoint through our inverse conversion.

  The tensors go through a temporary safetensors file, one at a time, and transformers loads it
  as it loads any checkpoint (including its own renames, e.g. fused expert weights).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  plan = plan_to_huggingface(items, "", config, where, model_name, scan_layers, "float32")
  reader = CheckpointReader(items)
  param_of = models.BY_NAME[plan.family].param
  tasks = [t for shard in plan.shards for t in shard.tensors]
  with tempfile.TemporaryDirectory(prefix="ckptflow-check-") as tmp:
    entries = [(t.name, t.dtype, t.shape) for t in tasks]
    with SafetensorsWriter(os.path.join(tmp, "model.safetensors"), entries, HF_FILE_METADATA) as writer:
      for task, tensor, _ in hf_tensors(reader, tasks, param_of, plan.sizes):
        writer.write(task.name, tensor)
    storage.write_text(os.path.join(tmp, "config.json"), json.dumps(plan.config))
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                                    output_loading_info=True)
  if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
    raise ConversionError(f"{items}: converted weights do not fit the model: missing {sorted(info['missing_keys'])[:3]}, "
                          f"unexpected {sorted(info['unexpected_keys'])[:3]}")
  return model.eval()


def maxtext_logits(maxtext_argv: Sequence[str]):
  """tokens -> logits from MaxText's own (linen) model, restored from load_parameters_path.

  `maxtext_argv` is MaxText's command line after the program name: its base config, then the
  key=value overrides (model_name, load_parameters_path, scan_layers, ...).
  """
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from maxtext.common.common_types import DECODING_ACTIVE_SEQUENCE_INDICATOR, MODEL_MODE_TRAIN
  from maxtext.configs import pyconfig
  from maxtext.layers import quantizations
  from maxtext.models import models as maxtext_models
  from maxtext.utils import maxtext_utils
  config = pyconfig.initialize_pydantic(["check_logits", *maxtext_argv])
  mesh = jax.sharding.Mesh(maxtext_utils.create_device_mesh(config), config.mesh_axes)
  rng = jax.random.PRNGKey(config.init_weights_seed)
  model = maxtext_models.transformer_as_linen(config, mesh, quant=quantizations.configure_quantization(config),
                                              model_mode=MODEL_MODE_TRAIN)
  init_state = functools.partial(maxtext_utils.init_initial_state, model, None, config, False, rng)
  state, _ = maxtext_utils.setup_decode_state(config, mesh, None, init_state)
  batch = config.global_batch_size_to_train_on

  def logits(tokens: Sequence[int]) -> np.ndarray:
    n = len(tokens)
    ids = jnp.asarray([list(tokens)] * batch, dtype=jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
    segments = jnp.full((batch, n), DECODING_ACTIVE_SEQUENCE_INDICATOR, dtype=jnp.int32)
    out = model.apply(state.params, ids, positions, segments, enable_dropout=False, rngs={"aqt": rng})
    return np.asarray(out[0, :n], dtype=np.float32)
  return logits


def maxtext_argv(argv: Sequence[str], args: argparse.Namespace) -> list[str]:
  """MaxText's own command line: a base config (given, else MaxText's), then every key=value."""
  configs = [a for a in argv if a.endswith((".yml", ".yaml"))]
  if not configs:
    import maxtext  # pylint: disable=import-outside-toplevel
    configs = [os.path.join(os.path.dirname(maxtext.__file__), "configs", "base.yml")]
  overrides = [a for a in argv if "=" in a and not a.startswith("-")]
  given = {a.split("=", 1)[0] for a in overrides}
  implied = {"load_parameters_path": args.load_parameters_path, "model_name": args.model_name,
             "scan_layers": None if args.scan_layers is None else str(args.scan_layers).lower(),
             "max_prefill_predict_length": str(args.max_prefill_predict_length),
             "max_target_length": str(args.max_target_length)}
  return configs[:1] + overrides + [f"{k}={v}" for k, v in implied.items() if v is not None and k not in given]


def choose_backend(requested: str) -> str:
  if requested == "auto":
    return "maxtext" if importlib.util.find_spec("maxtext") is not None else "ckptflow"
  if requested == "maxtext" and importlib.util.find_spec("maxtext") is None:
    raise ConversionError("--backend=maxtext needs the maxtext package (Python >= 3.12); use --backend=ckptflow")
  return requested


def reference_logits(hf_model_path: str, token_lists: Sequence[Sequence[int]]) -> list[np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_model_path, dtype=torch.float32).eval()
  return [forward(model, tokens) for tokens in token_lists]


def forward(model, tokens: Sequence[int]) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(torch.tensor([list(tokens)])).logits[0].float().numpy()


def tokenize(hf_model_path: str | None, prompts: Sequence[str], vocab_size: int, max_tokens: int):
  """Token ids per prompt and a decoder; without a tokenizer, fixed pseudo-random ids per prompt."""
  tokenizer = None
  if hf_model_path and storage.exists(storage.join(hf_model_path, "tokenizer.json")):
    import transformers  # pylint: disable=import-outside-toplevel
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_model_path)
  if tokenizer is not None:
    token_lists = [tokenizer(p)["input_ids"][:max_tokens] for p in prompts]
    return token_lists, lambda t: repr(tokenizer.decode([t]))[:24]
  token_lists = [list(np.random.default_rng(sum(map(ord, p))).integers(0, vocab_size, size=max_tokens))
                 for p in prompts]
  return token_lists, str


def read_golden(path: str) -> list[dict[str, Any]]:
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def write_golden(path: str, prompts, token_lists, logits) -> None:
  storage.write_text(path, "".join(json.dumps({"prompt": p, "tokens": [int(t) for t in toks],
                                               "logits": np.asarray(l, np.float32).tolist()}) + "\n"
                                   for p, toks, l in zip(prompts, token_lists, logits)))


def parse(argv: list[str]) -> argparse.Namespace:
  parser = cli.OneLineParser(prog="python -m pipeline.check_logits", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  add("--load_parameters_path", required=True, help="the MaxText checkpoint item, <dir>/0/items")
  add("--model_name", default=None)
  add("--scan_layers", type=str2bool, default=None, help="must match the checkpoint (default: read from it)")
  add("--hf_model_path", default=None, help="the HF model: reference weights, config and tokenizer")
  add("--run_hf_model", type=str2bool, nargs="?", const=True, default=True,
      help="run the HF model for the reference logits (else --golden_logits_path)")
  add("--golden_logits_path", default=None, help="reference logits saved by --save_golden_logits")
  add("--save_golden_logits", default=None, help="write the reference logits here (JSON lines)")
  add("--max_kl_div", type=float, default=0.01, help="fail above this per-token KL(P_hf || Q). Default 0.01")
  add("--max_prefill_predict_length", type=int, default=512, help="prompt tokens used, at most")
  add("--max_target_length", type=int, default=1024, help="sequence length limit, at most")
  add("--prompt", action="append", default=None, help="a prompt (repeatable); default: three short ones")
  add("--top_k", type=int, default=10)
  add("--backend", default="auto", choices=("auto", "maxtext", "ckptflow"),
      help="who runs the converted checkpoint: MaxText's own model, or ckptflow's inverse conversion "
           "into an HF model (default: maxtext when importable)")
  flags, notes = cli.translate(argv, MAXTEXT_KEYS)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  return parser.parse_args(flags)


def main(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv):
    parse(["--help"])
  args = parse(argv)
  config, where = target_config(args.hf_model_path, args.model_name)
  vocab_size = config.get("text_config", config)["vocab_size"]  # multimodal configs nest the text model
  prompts = args.prompt or list(DEFAULT_PROMPTS)
  max_tokens = min(args.max_prefill_predict_length, args.max_target_length)
  if args.golden_logits_path:
    golden = read_golden(args.golden_logits_path)
    prompts = [g["prompt"] for g in golden]
    token_lists = [g["tokens"] for g in golden]
    ref = [np.asarray(g["logits"], np.float32) for g in golden]
    _, decode = tokenize(args.hf_model_path, prompts, vocab_size, max_tokens)
  elif args.run_hf_model and args.hf_model_path:
    token_lists, decode = tokenize(args.hf_model_path, prompts, vocab_size, max_tokens)
    ref = reference_logits(args.hf_model_path, token_lists)
  else:
    raise ConversionError("the reference needs --hf_model_path with --run_hf_model=true, or --golden_logits_path")
  if args.save_golden_logits:
    write_golden(args.save_golden_logits, prompts, token_lists, ref)
  backend = choose_backend(args.backend)
  if backend == "maxtext":
    ours = maxtext_logits(maxtext_argv(argv, args))
  else:
    model = converted_model(args.load_parameters_path, config, where, args.model_name, args.scan_layers)
    ours = functools.partial(forward, model)
  print(f"converted model: {backend} backend")
  worst = 0.0
  for prompt, tokens, ref_logits in zip(prompts, token_lists, ref):
    comparison = compare(prompt, ref_logits, ours(tokens), args.top_k)
    print(report(comparison, decode))
    worst = max(worst, float(comparison.kl_per_token.max()))
  verdict = "PASS" if worst <= args.max_kl_div else "FAIL"
  print(f"{verdict}: max per-token KL {worst:.3e} (limit {args.max_kl_div:g})")
  return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
