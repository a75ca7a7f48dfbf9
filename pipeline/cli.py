"""MaxText's command lines, accepted as they are, turned into ConversionOptions flags.

`key=value` words are MaxText config overrides: the ones ckptflow uses become `--key=value`; other
keys of MaxText's config (hardware=cpu, skip_jax_distributed_system=true, ...) only matter to MaxText
and are noted and ignored; a key MaxText does not have either is refused with the closest one, as
MaxText's own config loader refuses it. A positional `*.yml` (MaxText's base config) is ignored.
`--flags` pass through when they are ours or Beam's pipeline options (--runner, --direct_num_workers,
--project, ...); any other is refused. Every refusal is one line, before anything is read or written.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import traceback
from typing import Callable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from transforms.errors import ConversionError
from pipeline import interrupts, maxtext_config, usage
from pipeline.options import ConversionOptions, str2bool

BEAM_OPTIONS_HELP = usage.BEAM_OPTIONS_HELP


# MaxText's LoRA settings. One a command does not use is an error, never a note: ignoring it would
# convert something else than what was asked (the base model instead of an adapter). Values that ask
# for nothing (MaxText's defaults: "", false, 0) are accepted.
LORA_KEYS = ("hf_lora_adapter_path", "lora_input_adapters_path")
LORA_DEFAULT_VALUES = ("", "false", "none", "null", "0", "0.0")


def is_lora_key(key: str) -> bool:
  return key in LORA_KEYS or key.startswith("lora.")


def translate(argv: Sequence[str], used_keys: Sequence[str], command: str | None = None
              ) -> tuple[list[str], list[str]]:
  """MaxText argv -> (pipeline flags, notes for the user about what was ignored).

  `command` (to_maxtext, to_huggingface, ...) names the command in the line that refuses a key of
  another one."""
  flags: list[str] = []
  notes: list[str] = []
  for word in argv:
    if word == "--dry_run":  # Beam's flag takes a value
      flags.append("--dry_run=true")
    elif word.startswith("-"):
      flags.append(word)
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*=.*", word, flags=re.S):
      key, value = word.split("=", 1)
      other = usage.other_command(key, command)
      if key in used_keys:
        flags.append(f"--{key}={value}")
      elif is_lora_key(key) and value.strip().lower() not in LORA_DEFAULT_VALUES:
        lora = " ".join(f"{k}=" for k in used_keys if is_lora_key(k)) or "none"
        raise ConversionError(f"{word}: this command cannot honour MaxText's LoRA option {key} and will not convert "
                              f"without it; its LoRA options are: {lora} (to_maxtext: hf_lora_adapter_path= a PEFT "
                              "adapter; to_huggingface: lora.lora_restore_path= a MaxText adapter checkpoint)")
      elif other is not None and not is_lora_key(key):
        raise ConversionError(f"{key}= is an option of {other}, not of {command or 'this command'}; "
                              f"drop it (or run {other})")
      elif maxtext_config.is_key(key):
        notes.append(f"ignored {word!r}: it only matters to MaxText itself")
      else:
        raise ConversionError(maxtext_config.unknown_key(key, used_keys))
    elif word.endswith((".yml", ".yaml")):
      notes.append(f"ignored {word!r}: MaxText's base config is not needed")
    else:
      raise ConversionError(f"unexpected argument {word!r}; use key=value or --flag=value (see --help)")
  return flags, notes


class OneLineParser(_BeamArgumentParser):
  """An argument parser whose every complaint is one ConversionError line (exit 2 by run_main), never
  argparse's usage dump; an unknown flag gets the closest known one."""

  def error(self, message):
    if message.startswith("ambiguous option: "):  # as Beam's parser: let the next parser decide
      return
    if message.startswith("unrecognized arguments: "):
      raise ConversionError(unknown_flag(message.split(": ", 1)[1].split()[0], self.option_strings()))
    raise ConversionError(_value_error(message))

  def option_strings(self) -> list[str]:
    return [s for s in self._option_string_actions if s.startswith("--")]


def unknown_flag(word: str, known: Sequence[str]) -> str:
  name = word.split("=", 1)[0]
  return f"unknown flag {name}" + maxtext_config.did_you_mean(name, known)


@functools.lru_cache(maxsize=None)
def _all_options_parser() -> OneLineParser:
  """Every pipeline option Beam and ckptflow define, as Beam's own get_all_options gathers them."""
  parser = OneLineParser(allow_abbrev=False, add_help=False)
  subset = {}
  for cls in PipelineOptions.__subclasses__():
    subset.setdefault(str(cls), cls)
  subset.setdefault(str(ConversionOptions), ConversionOptions)
  for cls in subset.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser


def check_flags(flags: Sequence[str], where: str = "") -> None:
  """Refuses a --flag neither ckptflow nor Beam has, and a value its option cannot take (one line each)."""
  parser = _all_options_parser()
  prefix = f"{where}: " if where else ""
  try:
    _, unknown = parser.parse_known_args(list(flags))
  except ConversionError as e:
    raise ConversionError(f"{prefix}{e}") from None
  for word in unknown:
    if word.startswith("-"):
      raise ConversionError(prefix + unknown_flag(word, parser.option_strings()))
    raise ConversionError(f"{prefix}unexpected argument {word!r}; use key=value or --flag=value (see --help)")


def _value_error(message: str) -> str:
  """argparse's "argument --x: invalid choice: 'y' (choose from 'a', 'b')" as one plain line."""
  return re.sub(r"^argument (--[\w.]+)(?:/--[\w.]+)*: ", r"\1: ", message)


def prog_name(default: str, command: str | None) -> str:
  """`ckptflow <command>` when run by the ckptflow command (pipeline/command.py), else `default`."""
  return f"ckptflow {command}" if command and os.path.basename(sys.argv[0] or "").startswith("ckptflow") else default


def help_text(prog: str, summary: str, maxtext_keys: Sequence[str], command: str | None = None,
              options: Sequence[str] | None = None) -> str:
  """--help: the command's own options, grouped (all of them when `options` is not given)."""
  return usage.help_text(prog, command or "", summary, maxtext_keys,
                         tuple(usage.option_calls()) if options is None else options)


def start(argv: Sequence[str], prog: str, doc: str, maxtext_keys: Sequence[str], command: str | None = None,
          options: Sequence[str] | None = None) -> list[str] | None:
  """The flags of a command line, with notes on what was ignored; None after printing --help.

  Unknown keys and flags, and values an option cannot take, are refused here: nothing has been read
  or written yet."""
  if any(a in ("-h", "--help") for a in argv):
    print(help_text(prog_name(prog, command), doc, maxtext_keys, command, options))
    return None
  flags, notes = translate(argv, maxtext_keys, command)
  check_flags(flags)
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
