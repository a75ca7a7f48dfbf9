"""The flex templates' metadata.json, made from the options parser so the two cannot drift apart.

  python -m pipeline.template_metadata      # rewrites dataflow_templates/<direction>/metadata.json

A template parameter is passed to the launcher's program as --name=value, exactly as on the command
line, so each parameter is a ConversionOptions option of that direction, with the parser's help,
and a regex that Dataflow checks before it starts a launcher.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

from pipeline import to_huggingface_job, to_maxtext_job
from pipeline.options import ConversionOptions, str2bool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRECTIONS = {"to_maxtext": to_maxtext_job, "to_huggingface": to_huggingface_job}
TITLES = {
    "to_maxtext": ("ckptflow: Hugging Face safetensors to MaxText Orbax",
                   "Converts an HF checkpoint (config.json + *.safetensors on gs://), or a MaxText checkpoint "
                   "(load_parameters_path, or a training state's parameters: load_full_state_path), into a MaxText "
                   "checkpoint at <base_output_directory>/0/items (zarr3 + OCDBT), committed inside the job after "
                   "every slice."),
    "to_huggingface": ("ckptflow: MaxText Orbax to Hugging Face safetensors",
                       "Converts a MaxText checkpoint (<dir>/0/items on gs://) into sharded safetensors, the index "
                       "and config.json (written last), inside the job."),
}
# Options a command reads that make no sense as parameters of a launcher that submits and returns.
NOT_TEMPLATE_PARAMETERS = {
    "progress": "the progress bar is drawn by a local runner's driver",
    "wait": "a flex template launcher must return once the job is submitted",
    "hf_access_token": "a token must not be a job parameter (the console shows them); give the workers HF_TOKEN",
    "workers": "pre-flight only (--dry_run), which a launcher does not run",
    "worker_mbps": "pre-flight only (--dry_run), which a launcher does not run",
    "verbose": "how the command line prints an error; a launcher's log keeps the whole traceback anyway",
    "all_steps": "a launch converts one checkpoint; export every step of a run with --all_steps from cron or a batch",
}

_GCS = r"^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/[^\r\n]*)?$"
_BOOL = r"^(true|false|True|False|TRUE|FALSE|1|0|yes|no)$"
_POSITIVE = r"^[1-9][0-9]*$"
# Regexes of options whose type or choices do not give one.
_SIZE = r"^[0-9]+(\.[0-9]+)?\s*(([KMGTkmgt][Ii]?)?[Bb])?$"
REGEXES = {
    "hf_model_path": r"^(gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/[^\r\n]*)?|hf://[A-Za-z0-9][-\w.]*/[-\w.]+(@[-\w./]+)?)$",
    "base_output_directory": _GCS,
    "load_parameters_path": _GCS,
    "load_full_state_path": _GCS,
    "model_name": r"^[a-z0-9][-a-z0-9._]*$",
    "max_shard_size": _SIZE,
    "max_element_size": _SIZE,
    "revision": r"^[-\w./]+$",
    "hf_cache_dir": _GCS,
    "simulated_cpu_devices_count": _POSITIVE,
    "vocab_size": _POSITIVE,
    "zstd_level": r"^([0-9]|1[0-9]|2[0-2])$",
    "hf_lora_adapter_path": r"^(gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/[^\r\n]*)?|hf://[A-Za-z0-9][-\w.]*/[-\w.]+(@[-\w./]+)?)$",
    "lora_restore_path": _GCS,
    "lora_rank": _POSITIVE,
    "lora_alpha": r"^[0-9]+(\.[0-9]+)?$",
    "step": r"^[0-9]+$",
}
LABELS = {
    "hf_model_path": "Hugging Face model directory",
    "base_output_directory": "Output directory",
    "load_parameters_path": "MaxText checkpoint items",
    "load_full_state_path": "MaxText training state items",
    "force_unroll": "Unscanned layers",
    "model_name": "MaxText model name",
    "scan_layers": "Scanned layers",
    "weight_dtype": "HF weight dtype",
    "max_shard_size": "Largest safetensors shard",
    "save_dtype": "MaxText weight dtype",
    "checkpoint_storage_use_zarr3": "zarr3 arrays",
    "checkpoint_storage_use_ocdbt": "One OCDBT database",
    "simulated_cpu_devices_count": "Chunks per array",
    "use_multimodal": "Convert the vision tower",
    "vocab_size": "MaxText vocabulary size",
    "zstd_level": "zstd level",
    "max_element_size": "Largest element (row blocks above it)",
    "quantize_fp8_blocks": "Write DeepSeek FP8 blocks",
    "revision": "Hub revision",
    "hf_cache_dir": "Cache of Hub reads",
    "overwrite": "Replace an existing output",
    "resume": "Finish an interrupted conversion",
    "hf_lora_adapter_path": "PEFT LoRA adapter",
    "merge_lora": "Merge the adapter into the base",
    "lora_restore_path": "MaxText LoRA adapter checkpoint",
    "lora_rank": "LoRA rank (checked)",
    "lora_alpha": "LoRA alpha (checked, or given)",
    "step": "Step of a training run",
}
# One documented value per parameter, shown in its help text (tests check each passes its regex).
EXAMPLES = {
    "hf_model_path": {"to_maxtext": "gs://my-bucket/hf/Llama-3.1-8B", "to_huggingface": "gs://my-bucket/hf/Qwen3-4B"},
    "base_output_directory": {"to_maxtext": "gs://my-bucket/maxtext/llama3.1-8b",
                              "to_huggingface": "gs://my-bucket/hf-out/qwen3-4b"},
    "load_parameters_path": "gs://my-bucket/maxtext/qwen3-4b/0/items",
    "load_full_state_path": "gs://my-bucket/runs/qwen3-4b/checkpoints/2000/items",
    "force_unroll": "true",
    "model_name": "llama3.1-8b",
    "scan_layers": "true",
    "weight_dtype": "bfloat16",
    "max_shard_size": "5GB",
    "save_dtype": "bfloat16",
    "checkpoint_storage_use_zarr3": "true",
    "checkpoint_storage_use_ocdbt": "true",
    "simulated_cpu_devices_count": "16",
    "use_multimodal": "false",
    "vocab_size": "128256",
    "zstd_level": "1",
    "max_element_size": "256MiB",
    "quantize_fp8_blocks": "false",
    "revision": "main",
    "hf_cache_dir": "gs://my-bucket/hf-cache",
    "overwrite": "false",
    "resume": "true",
    "hf_lora_adapter_path": "gs://my-bucket/adapters/my-lora",
    "merge_lora": "false",
    "lora_restore_path": "gs://my-bucket/maxtext/llama3.1-8b/my-lora/0/items",
    "lora_rank": "16",
    "lora_alpha": "32",
    "step": "2000",
}


def actions() -> dict[str, argparse.Action]:
  """The parser's actions by option name, as the CLIs build them."""
  parser = argparse.ArgumentParser(add_help=False)
  ConversionOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return {a.dest: a for a in parser._actions}  # pylint: disable=protected-access


def template_parameters(direction: str) -> tuple[str, ...]:
  return tuple(n for n in DIRECTIONS[direction].OPTIONS if n not in NOT_TEMPLATE_PARAMETERS)


def example(name: str, direction: str) -> str:
  value = EXAMPLES[name]
  return value[direction] if isinstance(value, dict) else value


def regex(action: argparse.Action) -> str:
  if action.dest in REGEXES:
    return REGEXES[action.dest]
  if action.choices:
    return "^(" + "|".join(re.escape(c) for c in action.choices) + ")$"
  if action.type is str2bool:
    return _BOOL
  raise KeyError(f"no regex for --{action.dest}: add it to REGEXES")


def parameter(action: argparse.Action, direction: str, required: bool) -> dict[str, Any]:
  help_text = " ".join(action.help.split())
  return {"name": action.dest, "label": LABELS[action.dest],
          "helpText": f"{help_text} Example: {example(action.dest, direction)}",
          "isOptional": not required, "regexes": [regex(action)]}


def metadata(direction: str) -> dict[str, Any]:
  by_name = actions()
  module = DIRECTIONS[direction]
  name, description = TITLES[direction]
  return {"name": name, "description": description, "streaming": False,
          "parameters": [parameter(by_name[n], direction, n in module.REQUIRED)
                         for n in template_parameters(direction)]}


def path(direction: str) -> str:
  return os.path.join(ROOT, "dataflow_templates", direction, "metadata.json")


def render(direction: str) -> str:
  return json.dumps(metadata(direction), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
  for direction in DIRECTIONS:
    with open(path(direction), "w", encoding="utf-8") as f:
      f.write(render(direction))
    print(f"wrote {path(direction)}")


if __name__ == "__main__":
  main()
