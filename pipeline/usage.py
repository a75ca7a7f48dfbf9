"""What each command accepts and how its --help reads: its MaxText keys, its options in groups, an example.

The key tables live here, not in the commands, because every command needs the others' too: a
key of to_maxtext given to to_huggingface (load_full_state_path=, force_unroll=) is refused as
"an option of to_maxtext", not noted as "only matters to MaxText".
"""
from __future__ import annotations

import argparse
import re
from typing import Sequence

from pipeline.options import ConversionOptions

KEYS = {
    "to_maxtext": ("model_name", "base_output_directory", "scan_layers", "checkpoint_storage_use_zarr3",
                   "checkpoint_storage_use_ocdbt", "hf_model_path", "save_dtype", "use_multimodal", "vocab_size",
                   "hf_access_token", "revision", "hf_lora_adapter_path", "load_parameters_path", "lora.lora_rank",
                   "lora.lora_alpha", "load_full_state_path", "force_unroll", "weight_dtype"),
    "to_huggingface": ("model_name", "load_parameters_path", "base_output_directory", "scan_layers", "weight_dtype",
                       "hf_model_path", "hf_access_token", "max_shard_size", "use_multimodal", "vocab_size",
                       "quantize_fp8_blocks", "revision", "lora.lora_restore_path", "lora.lora_rank",
                       "lora.lora_alpha"),
}

EXAMPLES = {
    "to_maxtext": ("{prog} model_name=qwen3-4b base_output_directory=/tmp/qwen3-4b scan_layers=true "
                   "--hf_model_path=Qwen/Qwen3-4B --save_dtype=bf16",
                   "(writes /tmp/qwen3-4b/0/items; MaxText loads it with load_parameters_path=/tmp/qwen3-4b/0/items)"),
    "to_huggingface": ("{prog} model_name=qwen3-4b load_parameters_path=/tmp/qwen3-4b/0/items "
                       "base_output_directory=/tmp/qwen3-4b-hf --hf_model_path=Qwen/Qwen3-4B",
                       "(scanned or not: the layout is read from the checkpoint; scan_layers= only asserts it)"),
    "verify": ("{prog} load_parameters_path=/tmp/qwen3-4b/0/items --hf_model_path=Qwen/Qwen3-4B",
               "(re-converts every slice from the source and compares it with the stored one)"),
    "plan": ("{prog} to_maxtext model_name=qwen3-4b base_output_directory=/tmp/qwen3-4b --hf_model_path=Qwen/Qwen3-4B",
             "(headers only: elements, bytes, memory per worker, estimated time; nothing is written)"),
}

# Options in the order --help shows them, by what they are about.
GROUPS = (
    ("source", ("hf_model_path", "load_parameters_path", "load_full_state_path", "model_name", "revision",
                "hf_access_token", "hf_cache_dir", "step", "all_steps", "hf_lora_adapter_path", "merge_lora",
                "lora_restore_path", "lora_rank", "lora_alpha", "use_multimodal", "vocab_size", "lazy_load_tensors",
                "eager_load_method")),
    ("output", ("base_output_directory", "scan_layers", "force_unroll", "save_dtype", "weight_dtype", "max_shard_size",
                "quantize_fp8_blocks", "overwrite", "resume", "verify_report")),
    ("storage", ("checkpoint_storage_use_zarr3", "checkpoint_storage_use_ocdbt", "simulated_cpu_devices_count",
                 "zstd_level", "max_element_size")),
    ("run", ("workers", "worker_mbps", "progress", "verbose", "wait")),
)

BEAM_OPTIONS_HELP = """\
Beam pipeline options pass through unchanged, e.g.:
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --num_workers=N
  --direct_num_workers=N   workers of the local runner (default: the number of CPUs), threads of one
                           process (--direct_running_mode=multi_processing: processes)
Without --runner, the local runner is used and nothing touches the network.
"""


def other_command(key: str, command: str | None) -> str | None:
  """The conversion command `key` belongs to, when it is not `command`'s (None for no command: check_logits
  hands MaxText's keys to MaxText's own config)."""
  if command is None or (command in KEYS and key in KEYS[command]):
    return None
  return next((name for name, keys in KEYS.items() if name != command and key in keys), None)


class _Recorder:
  """Stands in for a parser: keeps each add_argument call, to replay the ones a command has."""

  def __init__(self):
    self.calls: dict[str, tuple[tuple, dict]] = {}

  def add_argument(self, *names, **kwargs):
    dest = kwargs.get("dest") or names[0].lstrip("-")
    self.calls[dest] = (names, kwargs)


def option_calls() -> dict[str, tuple[tuple, dict]]:
  recorder = _Recorder()
  ConversionOptions._add_argparse_args(recorder)  # pylint: disable=protected-access
  return recorder.calls


_MARKER = re.compile(r"(?:^|(?<=[.)] ))(to_maxtext|to_huggingface|verify)\b[^.:]{0,40}: ")


def own_help(text: str, command: str) -> str:
  """An option's help without the sentences that say what it means to another command
  ("to_maxtext: ... to_huggingface: ..." keeps the part of `command`)."""
  marks = list(_MARKER.finditer(text or ""))
  if command not in KEYS or not marks:
    return text
  parts = [text[:marks[0].start()]]
  for mark, after in zip(marks, marks[1:] + [None]):
    if mark.group(1) == command:
      parts.append(text[mark.start():after.start() if after else len(text)])
  kept = " ".join(p.strip() for p in parts if p.strip())
  return kept or text


def summary_of(doc: str) -> str:
  """A docstring's first paragraph."""
  return (doc or "").strip().split("\n\n")[0]


def help_text(prog: str, command: str, doc: str, maxtext_keys: Sequence[str], options: Sequence[str]) -> str:
  """--help of one command: its own options only, grouped, each with its help, and an example."""
  dry_run = command in KEYS  # the conversions; plan is a dry run, verify has none
  parser = argparse.ArgumentParser(prog=prog, add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   usage=f"{prog} [-h]{' [--dry_run]' if dry_run else ''} key=value ... "
                                         "[--flag=value ...]",
                                   description=summary_of(doc))
  calls = option_calls()
  own = set(options)
  for title, names in GROUPS:
    shown = [n for n in names if n in own and n in calls]
    group = parser.add_argument_group(title) if shown or title == "run" else None
    for name in shown:
      args, kwargs = calls[name]
      group.add_argument(*args, **{**kwargs, "help": own_help(kwargs.get("help", ""), command)})
    if title == "run":
      group.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    if title == "run" and dry_run:
      group.add_argument("--dry_run", action="store_true",
                         help="print the pre-flight plan (elements, bytes, memory per worker, estimated time) from "
                              "headers only, and stop")
  example = EXAMPLES.get(command)
  shown_example = ""
  if example:
    shown_example = "\nexample:\n  " + example[0].format(prog=prog) + "\n  " + example[1] + "\n"
  keys = " ".join(f"{k}=..." for k in maxtext_keys)
  epilog = (f"\nMaxText's key=value overrides are accepted for: {keys}\n"
            "(each is the --flag of the same name). Other keys of MaxText's config, such as hardware=cpu or\n"
            "skip_jax_distributed_system=true, are accepted and ignored; any other key or --flag is an error.\n"
            "dtypes may be written bf16, fp32 or fp16.\n\n" + BEAM_OPTIONS_HELP)
  return parser.format_help() + shown_example + epilog
