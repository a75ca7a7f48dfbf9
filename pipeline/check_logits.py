"""Forward-pass check: the HF model and the converted MaxText checkpoint on the same prompts.

  python -m pipeline.check_logits load_parameters_path=<dir>/0/items model_name=llama3.1-8b \\
      --hf_model_path=DIR [--run_hf_model=true] [--max_kl_div=0.01] [--atol=0.1 --rtol=0.01] \\
      [--golden_logits_path=F.jsonl] [--output_logits_path=OUT.jsonl] [--token_size=N] [tokenizer_path=DIR]

Prints per prompt the top-k tokens of both models at the last position, their overlap, Jaccard
similarity and rank agreement, and the average and maximum per-token KL(P_hf || Q_converted).
MaxText's forward_pass_logit_checker flags mean what they mean there: it fails (exit 1) when a
token's KL reaches --max_kl_div, or, with --atol, when the logits are not allclose(rtol=--rtol,
atol=--atol); both over the first --token_size positions (default: all; --skip_first_token
leaves out position 0) and the vocabulary both models have. With neither --atol nor --max_kl_div,
--max_kl_div=0.01. --output_logits_path saves the converted model's logits (JSON lines).
Golden logits are JSON lines (prompt, tokens, logits) or .npz (tokens_<i>, logits_<i>, prompt_<i>);
pickle files are refused: unpickling runs code. Token ids come from tokenizer_path=, else
--hf_model_path's tokenizer, else the model the checkpoint was converted from (its manifest);
without any, synthetic ids, and it says so.

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
from transforms import manifest, storage
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
                "max_target_length", "hf_model_path", "tokenizer_path")
# With neither --atol nor --max_kl_div (MaxText's checker wants one of them).
DEFAULT_MAX_KL_DIV = 0.01


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
                    scan_layers: bool | None, plan=None):
  """An HF model whose weights stream from the MaxText checkpoint through our inverse conversion
  (`plan`: plan_to_huggingface's in float32, when already made).

  The tensors go through a temporary safetensors file, one at a time, and transformers loads it
  as it loads any checkpoint (including its own renames, e.g. fused expert weights).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  plan = plan or plan_to_huggingface(items, "", config, where, model_name, scan_layers, "float32")
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


@dataclasses.dataclass(frozen=True)
class Tokens:
  """Token ids per prompt, how to show a token, and whether the ids are synthetic (no tokenizer)."""
  lists: list[list[int]]
  decode: Any
  synthetic: bool = False


def load_tokenizer(where: str):
  """A tokenizer from a directory (or Hub repo) with tokenizer files, or a tokenizer.json file."""
  import transformers  # pylint: disable=import-outside-toplevel
  try:
    if where.endswith(".json") and storage.exists(where):
      return transformers.PreTrainedTokenizerFast(tokenizer_file=where)
    return transformers.AutoTokenizer.from_pretrained(where)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"tokenizer_path={where}: no tokenizer could be loaded from it ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); give a directory with tokenizer "
                          "files or a tokenizer.json") from None


def tokenizer_source(tokenizer_path: str | None, hf_model_path: str | None, items: str) -> str | None:
  """tokenizer_path= (MaxText's key), else --hf_model_path when it has a tokenizer, else the HF model
  the checkpoint was made from when its manifest records one and it is still there."""
  if tokenizer_path:
    return tokenizer_path
  recorded = manifest.recorded_model(items)
  for where in (hf_model_path, recorded.tokenizer_from if recorded else None):
    if where and not storage.is_hub(where) and storage.exists(storage.join(where, "tokenizer.json")):
      return where
  return None


def tokenize(tokenizer_from: str | None, prompts: Sequence[str], vocab_size: int, max_tokens: int) -> Tokens:
  """Token ids per prompt and a decoder; without a tokenizer, fixed pseudo-random ids per prompt."""
  if tokenizer_from:
    tokenizer = load_tokenizer(tokenizer_from)
    return Tokens([tokenizer(p)["input_ids"][:max_tokens] for p in prompts],
                  lambda t: repr(tokenizer.decode([t]))[:24])
  return Tokens([[int(t) for t in np.random.default_rng(sum(map(ord, p))).integers(0, vocab_size, size=max_tokens)]
                 for p in prompts], str, synthetic=True)


def read_golden(path: str) -> list[dict[str, Any]]:
  """Golden logits as MaxText's checker writes them (JSON lines: prompt, tokens, logits; a line may hold
  a list of them), or .npz arrays tokens_<i>, logits_<i> (and prompt_<i>). Never unpickled."""
  if path.endswith((".pkl", ".pickle")):
    raise ConversionError(f"{path}: pickle files are not read (unpickling runs arbitrary code); save the golden "
                          "logits as .jsonl (prompt, tokens, logits per line) or .npz")
  if path.endswith(".npz"):
    import io  # pylint: disable=import-outside-toplevel
    try:
      arrays = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
      count = len([k for k in arrays.files if k.startswith("logits_")])
      return [{"prompt": str(arrays[f"prompt_{i}"]) if f"prompt_{i}" in arrays.files else f"golden #{i + 1}",
               "tokens": arrays[f"tokens_{i}"].tolist(), "logits": arrays[f"logits_{i}"]} for i in range(count)]
    except (ValueError, KeyError, OSError) as e:
      raise ConversionError(f"{path}: not an .npz of tokens_<i> and logits_<i> arrays without pickled objects "
                            f"({str(e).splitlines()[0][:160]})") from None
  if not path.endswith((".jsonl", ".json")):
    raise ConversionError(f"{path}: golden logits are read from .jsonl (prompt, tokens, logits) or .npz")
  points = []
  for number, line in enumerate(storage.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)
    except json.JSONDecodeError:
      raise ConversionError(f"{path}: line {number} is not JSON") from None
    for point in value if isinstance(value, list) else [value]:
      if not isinstance(point, dict) or "tokens" not in point or "logits" not in point:
        raise ConversionError(f"{path}: line {number} has no tokens and logits")
      prompt = point.get("formatted_prompt", point.get("prompt", f"golden #{len(points) + 1}"))
      points.append({**point, "prompt": prompt})
  if not points:
    raise ConversionError(f"{path}: no golden logits in it")
  return points


def write_golden(path: str, prompts, token_lists, logits) -> None:
  storage.write_text(path, "".join(json.dumps({"prompt": p, "tokens": [int(t) for t in toks],
                                               "logits": np.asarray(l, np.float32).tolist()}) + "\n"
                                   for p, toks, l in zip(prompts, token_lists, logits)))


def write_output_logits(path: str, prompts, token_lists, ours, ref, golden: bool) -> None:
  """--output_logits_path, as MaxText's checker fills it: the converted model's logits per prompt
  (prompt, tokens, logits: usable as golden logits) against goldens, or mt_logits and hf_logits
  against the HF model; one JSON object per line."""
  def line(prompt, tokens, mine, theirs):
    record = {"prompt": prompt, "tokens": [int(t) for t in tokens]}
    if golden:
      record["logits"] = np.asarray(mine, np.float32).tolist()
    else:
      record.update(mt_logits=np.asarray(mine, np.float32).tolist(), hf_logits=np.asarray(theirs, np.float32).tolist())
    return json.dumps(record) + "\n"
  storage.write_text(path, "".join(line(*row) for row in zip(prompts, token_lists, ours, ref)))


@dataclasses.dataclass(frozen=True)
class Criteria:
  """MaxText's test criteria: per-token KL below `max_kl_div`; with `atol`, allclose(rtol, atol); over
  positions [start, token_size) and the vocabulary both sides have."""
  max_kl_div: float | None
  atol: float | None
  rtol: float
  token_size: int | None
  start: int

  def window(self, ref: np.ndarray, ours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vocab = min(ref.shape[-1], ours.shape[-1])
    stop = self.token_size
    return ref[self.start:stop, :vocab], ours[self.start:stop, :vocab]


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
  add("--golden_logits_path", default=None,
      help="reference logits: .jsonl (prompt, tokens, logits per line, as MaxText's checker reads) or .npz")
  add("--save_golden_logits", default=None, help="write the reference logits here (JSON lines)")
  add("--output_logits_path", default=None, help="write the converted model's logits here (JSON lines)")
  add("--max_kl_div", type=float, default=None,
      help="fail when a token's KL(P_ref || Q) is not below this (default 0.01 unless --atol is given)")
  add("--atol", type=float, default=None, help="also fail unless the logits are allclose with this atol")
  add("--rtol", type=float, default=1e-05, help="the rtol used with --atol. Default 1e-05 (as jnp.allclose)")
  add("--token_size", type=int, default=None, help="compare the first N positions only (default: all)")
  add("--skip_first_token", action="store_true", help="leave position 0 out of the comparison (BOS effects)")
  add("--tokenizer_path", default=None, help="where the tokenizer is: a directory, a Hub repo or a tokenizer.json")
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
  items = args.load_parameters_path
  config, where = target_config(args.hf_model_path, args.model_name, items)
  # Layout and shapes are checked from metadata, before any model is loaded.
  plan = plan_to_huggingface(items, "", config, where, args.model_name, args.scan_layers, "float32")
  vocab_size = config.get("text_config", config)["vocab_size"]  # multimodal configs nest the text model
  criteria = Criteria(DEFAULT_MAX_KL_DIV if args.max_kl_div is None and args.atol is None else args.max_kl_div,
                      args.atol, args.rtol, args.token_size, 1 if args.skip_first_token else 0)
  prompts = args.prompt or list(DEFAULT_PROMPTS)
  max_tokens = min(args.max_prefill_predict_length, args.max_target_length)
  tokenizer_from = tokenizer_source(args.tokenizer_path, args.hf_model_path, items)
  golden = bool(args.golden_logits_path)
  if golden:
    points = read_golden(args.golden_logits_path)
    prompts = [g["prompt"] for g in points]
    tokens = Tokens([list(g["tokens"]) for g in points], str)
    if tokenizer_from:
      tokens = dataclasses.replace(tokens, decode=tokenize(tokenizer_from, [], vocab_size, max_tokens).decode)
    ref = [np.asarray(g["logits"], np.float32) for g in points]
  elif args.run_hf_model and args.hf_model_path:
    tokens = tokenize(tokenizer_from, prompts, vocab_size, max_tokens)
    if tokens.synthetic:
      print(f"note: no tokenizer (no tokenizer_path=, and no tokenizer.json in --hf_model_path or the model the "
            f"checkpoint was made from): comparing on {len(prompts)} sequences of {max_tokens} synthetic token ids, "
            "not on the prompts", file=sys.stderr)
      prompts = [f"synthetic ids #{i + 1}" for i in range(len(prompts))]
    ref = reference_logits(args.hf_model_path, tokens.lists)
  else:
    raise ConversionError("the reference needs --hf_model_path with --run_hf_model=true, or --golden_logits_path")
  if args.save_golden_logits:
    write_golden(args.save_golden_logits, prompts, tokens.lists, ref)
  backend = choose_backend(args.backend)
  if backend == "maxtext":
    ours = maxtext_logits(maxtext_argv(argv, args))
  else:
    ours = functools.partial(forward, converted_model(items, config, where, args.model_name, args.scan_layers,
                                                        plan))
  print(f"converted model: {backend} backend")
  worst, worst_abs, worst_rel, close = 0.0, 0.0, 0.0, True
  outputs = []
  for prompt, token_list, ref_logits in zip(prompts, tokens.lists, ref):
    our_logits = ours(token_list)
    outputs.append(our_logits)
    theirs, mine = criteria.window(ref_logits, our_logits)
    comparison = compare(prompt, theirs, mine, args.top_k)
    print(report(comparison, tokens.decode))
    worst = max(worst, float(comparison.kl_per_token.max()))
    difference = np.abs(mine.astype(np.float64) - theirs.astype(np.float64))
    worst_abs = max(worst_abs, float(difference.max()))
    worst_rel = max(worst_rel, float((difference / np.abs(np.where(theirs == 0, 1e-8, theirs))).max()))
    if criteria.atol is not None:
      close = close and bool(np.allclose(mine, theirs, rtol=criteria.rtol, atol=criteria.atol))
  if args.output_logits_path:
    write_output_logits(args.output_logits_path, prompts, tokens.lists, outputs, ref, golden)
  kl_ok = criteria.max_kl_div is None or worst < criteria.max_kl_div
  verdict = "PASS" if kl_ok and close else "FAIL"
  limit = "none" if criteria.max_kl_div is None else f"{criteria.max_kl_div:g}"
  allclose = "" if criteria.atol is None else f", allclose(rtol={criteria.rtol:g}, atol={criteria.atol:g}) {close}"
  print(f"{verdict}: max per-token KL {worst:.3e} (limit {limit}), max |diff| {worst_abs:.3e}, "
        f"max relative diff {worst_rel:.3e}{allclose}")
  return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
