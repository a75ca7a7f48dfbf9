"""MaxText's command lines, accepted as they are, turned into ConversionOptions flags.

`key=value` words are MaxText config overrides: the ones ckptflow uses become `--key=value`, the
rest (hardware=cpu, skip_jax_distributed_system=true, ...) only matter to MaxText and are noted
and ignored. A positional `*.yml` (MaxText's base config) is ignored likewise. `--flags` pass
through: ours and Beam's pipeline options (--runner, --direct_num_workers, --project, ...).
"""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from typing import Callable, Sequence

from transforms.errors import ConversionError
from pipeline import interrupts
from pipeline.options import ConversionOptions, str2bool

BEAM_OPTIONS_HELP = """\
Beam pipeline options pass through unchanged, e.g.:
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --num_workers=N
  --direct_num_workers=N   worker processes of the local runner (default: the number of CPUs)
Without --runner, the local multi-process runner is used and nothing touches the network.
"""


# MaxText's LoRA settings. One a command does not use is an error, never a note: ignoring it would
# convert something else than what was asked (the base model instead of an adapter). Values that ask
# for nothing (MaxText's defaults: "", false, 0) are accepted.
LORA_KEYS = ("hf_lora_adapter_path", "lora_input_adapters_path")
LORA_DEFAULT_VALUES = ("", "false", "none", "null", "0", "0.0")


def is_lora_key(key: str) -> bool:
  return key in LORA_KEYS or key.startswith("lora.")


def translate(argv: Sequence[str], used_keys: Sequence[str]) -> tuple[list[str], list[str]]:
  """MaxText argv -> (pipeline flags, notes for the user about what was ignored)."""
  flags: list[str] = []
  notes: list[str] = []
  for word in argv:
    if word == "--dry_run":  # Beam's flag takes a value
      flags.append("--dry_run=true")
    elif word.startswith("-"):
      flags.append(word)
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*=.*", word, flags=re.S):
      key, value = word.split("=", 1)
      if key in used_keys:
        flags.append(f"--{key}={value}")
      elif is_lora_key(key) and value.strip().lower() not in LORA_DEFAULT_VALUES:
        lora = " ".join(f"{k}=" for k in used_keys if is_lora_key(k)) or "none"
        raise ConversionError(f"{word}: this command cannot honour MaxText's LoRA option {key} and will not convert "
                              f"without it; its LoRA options are: {lora} (to_maxtext: hf_lora_adapter_path= a PEFT "
                              "adapter; to_huggingface: lora.lora_restore_path= a MaxText adapter checkpoint)")
      else:
        notes.append(f"ignored {word!r}: it only matters to MaxText itself")
    elif word.endswith((".yml", ".yaml")):
      notes.append(f"ignored {word!r}: MaxText's base config is not needed")
    else:
      raise ConversionError(f"unexpected argument {word!r}; use key=value or --flag=value (see --help)")
  return flags, notes


def help_text(prog: str, summary: str, maxtext_keys: Sequence[str]) -> str:
  parser = argparse.ArgumentParser(prog=prog, description=summary, add_help=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  ConversionOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  keys = " ".join(f"{k}=..." for k in maxtext_keys)
  epilog = (f"\nMaxText-style overrides are accepted as key=value: {keys}\n"
            "(each is the --flag of the same name). Other key=value overrides of MaxText, such as\n"
            "hardware=cpu or skip_jax_distributed_system=true, are accepted and ignored.\n"
            "--dry_run prints the pre-flight plan (elements, bytes, memory per worker, estimated time)\n"
            "from headers only and stops; python -m pipeline.plan does the same.\n\n"
            + BEAM_OPTIONS_HELP)
  return parser.format_help() + epilog


def start(argv: Sequence[str], prog: str, doc: str, maxtext_keys: Sequence[str]) -> list[str] | None:
  """The flags of a command line, with notes on what was ignored; None after printing --help."""
  if any(a in ("-h", "--help") for a in argv):
    print(help_text(prog, doc, maxtext_keys))
    return None
  flags, notes = translate(argv, maxtext_keys)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  return flags


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
  """Runs `main`, turning ConversionError (also from inside a pipeline worker) into one line, and
  SIGINT / SIGTERM into one `interrupted:` line and exit 130 / 143. --verbose adds the traceback."""
  words = list(sys.argv[1:] if argv is None else argv)
  verbose = is_verbose(words)
  try:
    with interrupts.handled(verbose):
      return main(words)
  except KeyboardInterrupt as e:
    interrupted = interrupts.as_interrupted(e)
    if verbose:
      traceback.print_exc()
    print(f"interrupted: {interrupted.message or 'nothing was written'}", file=sys.stderr)
    return interrupted.exit_status
  except ConversionError as e:
    if verbose:
      traceback.print_exc()
    print(f"error: {error_line(e)}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    message = worker_error(e)
    if message is None:
      raise
    if verbose:
      traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 2


def is_verbose(words: Sequence[str]) -> bool:
  """--verbose (or --verbose=true; the last one wins) anywhere on the command line."""
  for word in reversed(words):
    if word == "--verbose":
      return True
    if word.startswith("--verbose="):
      try:
        return str2bool(word.split("=", 1)[1])
      except argparse.ArgumentTypeError:
        return False
  return False


def worker_error(e: BaseException) -> str | None:
  """The ConversionError message inside a runner's wrapped worker failure, if there is one."""
  found = re.findall(r"ConversionError: ([^\n]+)", str(e))
  return _without_step(found[-1].strip()) if found else None


def error_line(e: BaseException) -> str | None:
  """The one line of a failure: a ConversionError's message, raised here or in a worker; None for others."""
  return _without_step(str(e)) if isinstance(e, ConversionError) else worker_error(e)


def _without_step(message: str) -> str:
  """Beam appends where it happened, "[while running 'WriteSlices']": the message already says what."""
  return re.sub(r" \[while running '[^']*'\]$", "", message)
