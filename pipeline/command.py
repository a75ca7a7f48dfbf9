"""The `ckptflow` command: one installed entry point, one subcommand per `python -m pipeline.X`.

  ckptflow to_maxtext model_name=qwen3-4b base_output_directory=DIR --hf_model_path=Qwen/Qwen3-4B
  ckptflow to_huggingface load_parameters_path=DIR/0/items base_output_directory=OUT
  ckptflow {to_maxtext,to_huggingface,check_logits,verify,plan,batch,demo} --help
  ckptflow --version

It works from any directory: the current one is taken off the import path first (unless it is the
checkout ckptflow itself runs from), so a `models/` or `transforms.py` there cannot stand in for
ckptflow's own packages. Each subcommand runs its module as `python -m` would (runpy): this module
imports no entry point, and nothing but the standard library before the path is fixed.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Sequence

SUBCOMMANDS = {
    "to_maxtext": "HF safetensors (or a MaxText checkpoint) -> a MaxText Orbax checkpoint",
    "to_huggingface": "a MaxText Orbax checkpoint -> HF safetensors",
    "check_logits": "forward-pass check of a converted checkpoint against the HF model",
    "verify": "re-check a finished conversion to MaxText against its source, slice by slice",
    "plan": "the pre-flight report of a conversion (headers only, nothing written)",
    "batch": "run a list of conversions, skipping those whose output is up to date",
    "demo": "convert a small Llama-shaped model both ways and check the results",
}
# Where ckptflow's packages are: the directory holding pipeline/.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def version() -> str:
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    return metadata.version("ckptflow")
  except Exception:  # pylint: disable=broad-except  (a checkout that was never installed)
    return "unknown (not installed)"


def usage() -> str:
  lines = ["usage: ckptflow [-h] [--version] <command> [arguments ...]", "", "commands:"]
  lines += [f"  {name:<15} {what}" for name, what in SUBCOMMANDS.items()]
  lines += ["", "ckptflow <command> --help shows the command's own options and an example."]
  return "\n".join(lines)


def isolate_from_cwd() -> None:
  """Drops the current directory from sys.path (as '' or its absolute path) unless ckptflow runs from it.

  The local runner's worker processes (`python -m ...`, started in this directory) would put it first
  again: PYTHONSAFEPATH (Python >= 3.11) keeps it out of theirs, and PYTHONPATH leads them to this
  checkout when it is not installed."""
  cwd = os.path.realpath(os.getcwd())
  if cwd == os.path.realpath(ROOT):
    return
  sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != cwd]
  if ROOT not in sys.path:  # a checkout run as `python -m pipeline.command` from elsewhere (PYTHONPATH)
    sys.path.insert(0, ROOT)
  os.environ["PYTHONSAFEPATH"] = "1"
  paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  if not any(os.path.realpath(p) == os.path.realpath(ROOT) for p in paths):
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])


def main(argv: Sequence[str] | None = None) -> int:
  words = list(sys.argv[1:] if argv is None else argv)
  if not words or words[0] in ("-h", "--help"):
    print(usage())
    return 0 if words else 2
  if words[0] == "--version":
    print(f"ckptflow {version()}")
    return 0
  name, rest = words[0], words[1:]
  if name not in SUBCOMMANDS:
    import difflib  # pylint: disable=import-outside-toplevel
    close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else f"; the commands are {', '.join(SUBCOMMANDS)}"
    print(f"error: unknown command {name!r}{hint}", file=sys.stderr)
    return 2
  isolate_from_cwd()
  saved = sys.argv
  sys.argv = [f"ckptflow {name}", *rest]
  try:
    runpy.run_module(f"pipeline.{name}", run_name="__main__", alter_sys=False)
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter would print it
    return 1
  finally:
    sys.argv = saved
  return 0


if __name__ == "__main__":
  sys.exit(main())
