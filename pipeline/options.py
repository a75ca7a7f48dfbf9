"""Every ckptflow option in one PipelineOptions subclass; the MaxText-style CLI and the Dataflow
template parameters both map onto it one to one."""
from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions, TestOptions


def str2bool(value: str | bool) -> bool:
  if isinstance(value, bool):
    return value
  lowered = value.strip().lower()
  if lowered in ("true", "1", "yes", "y", "on"):
    return True
  if lowered in ("false", "0", "no", "n", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# Short names of the dtypes asked for (--save_dtype, --weight_dtype), as people write them.
DTYPE_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
                 "half": "float16"}


def dtype_name(value: str) -> str:
  """A dtype as argparse's `type`: bf16 / fp32 / fp16 become bfloat16 / float32 / float16."""
  lowered = value.strip().lower()
  return DTYPE_ALIASES.get(lowered, lowered)


def is_dry_run(options: PipelineOptions) -> bool:
  """--dry_run: print the pre-flight plan and stop. The flag is Beam's own (TestOptions), which
  takes a value; the CLI turns a bare --dry_run into --dry_run=true."""
  return str2bool(options.view_as(TestOptions).dry_run or False)


class ConversionOptions(PipelineOptions):
  """Options of both directions; MaxText's names where MaxText has one."""

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--hf_model_path", default=None,
        help="HF model: a local or gs:// directory with config.json and *.safetensors, or a Hub repo "
             "(org/repo when no such local directory exists, or hf://org/repo). to_maxtext: the source (without "
             "it, model_name's repo on the Hub, e.g. qwen3-4b -> Qwen/Qwen3-4B). to_huggingface: where config.json "
             "and the tokenizer files come from (default: MaxText's built-in config for model_name); likewise "
             "config.json for to_maxtext from a MaxText source.")
    add("--base_output_directory", default=None,
        help="to_maxtext: where the checkpoint goes, <dir>/0/items (MaxText's load_parameters_path). "
             "to_huggingface: the model directory (local, gs:// or hf://user/repo).")
    add("--model_name", default=None,
        help="MaxText model name (e.g. llama3.1-8b). Optional: the family is read from config.json; "
             "when given it must agree with it.")
    add("--scan_layers", type=str2bool, default=None,
        help="to_maxtext: stack decoder layers into one array per parameter (default true; from a MaxText "
             "source, the source's layout). "
             "to_huggingface: the layout the checkpoint must have (default: read from the checkpoint).")
    add("--load_parameters_path", default=None,
        help="The MaxText checkpoint item, <dir>/0/items (local or gs://). to_huggingface: the source; also its step "
             "directory, or a training run (its checkpoints/ directory): the latest committed step, or --step. "
             "to_maxtext: a MaxText source instead of an HF one (re-layout, dtype or storage change); config.json "
             "then comes from --hf_model_path (no weights needed) or model_name. With hf_lora_adapter_path=, it "
             "selects MaxText's merged LoRA mode instead (the base weights come from --hf_model_path, as in MaxText).")
    add("--load_full_state_path", default=None,
        help="to_maxtext: a MaxText training state, <dir>/<step>/items, whose parameters alone become a "
             "parameter-only checkpoint (generate_param_only_checkpoint); its optimizer state is never read.")
    add("--force_unroll", type=str2bool, nargs="?", const=True, default=False,
        help="to_maxtext: write unscanned layers (layers_0, layers_1, ...) whatever scan_layers= says, as "
             "MaxText's generate_param_only_checkpoint does with force_unroll=true.")
    add("--weight_dtype", type=dtype_name, default=None, choices=("bfloat16", "float32", "float16"),
        help="to_huggingface: dtype of the HF tensors (default: config.json's dtype, else bfloat16). to_maxtext "
             "from load_parameters_path: the saved dtype, as reshard_checkpoint reads it (--save_dtype wins).")
    add("--max_shard_size", default="5GB",
        help="to_huggingface: largest safetensors shard, as transformers reads it (5GB = 5e9 bytes).")
    add("--quantize_fp8_blocks", type=str2bool, nargs="?", const=True, default=False,
        help="to_huggingface, DeepSeek only: write the linear weights DeepSeek releases in FP8 as float8_e4m3fn "
             "with float32 weight_scale_inv per block (config.json's weight_block_size, default 128x128), as the "
             "released checkpoint stores them, and keep quantization_config in config.json.")
    add("--hf_access_token", default=None,
        help="Hugging Face token for Hub sources and hf:// destinations (default: the HF_TOKEN, else "
             "HF_AUTH_TOKEN environment variable). Never printed or written to the output.")
    add("--hf_cache_dir", default=None,
        help="Keep every byte range read from the Hub under this directory (local or gs://), keyed by commit, "
             "file and range; a later run at the same commit reads identical ranges from there. Off by default.")
    add("--save_dtype", type=dtype_name, default=None, choices=("bfloat16", "float32"),
        help="dtype of the saved MaxText weights. Default bfloat16 from an HF source; a MaxText source keeps each "
             "array's dtype, except a training state (load_full_state_path), which is cast to bfloat16.")
    add("--checkpoint_storage_use_zarr3", type=str2bool, default=True,
        help="zarr3 arrays (true, McJAX and Pathways) or zarr v2 (false).")
    add("--checkpoint_storage_use_ocdbt", type=str2bool, default=True,
        help="One OCDBT database for all arrays (true, McJAX) or one directory per array (false, Pathways).")
    add("--simulated_cpu_devices_count", type=int, default=16,
        help="Split each array's first axis divisible by N into N chunks, as MaxText's N simulated devices "
             "do (stacked layer axes are always chunked by 1). Default 16.")
    add("--use_multimodal", type=str2bool, nargs="?", const=True, default=False,
        help="Convert the vision tower and projector of a multimodal model too (MaxText's use_multimodal). "
             "Without it, only the language model is converted.")
    add("--vocab_size", type=int, default=None,
        help="MaxText's vocabulary size when it differs from config.json's (the embedding is padded with "
             "zeros or truncated). Default: MaxText's own for model_name (Gemma2 256128, Gemma3 262144), "
             "else config.json's.")
    add("--zstd_level", type=int, default=1,
        help="zstd level of the saved chunks; 0 stores them uncompressed. Default 1: as small as "
             "Orbax's level 3 on bf16 weights and 1.7x faster to write.")
    add("--max_element_size", default="256MiB",
        help="Tensors larger than this are read, converted and written in row blocks of about this size "
             "(separate Beam elements), so a worker's memory is bounded by it. Default 256MiB.")
    add("--workers", default="1,8,32,128",
        help="Pre-flight: worker counts to estimate the wall time for (comma-separated).")
    add("--worker_mbps", type=float, default=None,
        help="Pre-flight: source MB/s one worker converts. Default: the local runner's 300 to MaxText and 480 "
             "to HF (worker threads on the 2-CPU development VM, bench/run.sh), or 180 on Dataflow (one worker "
             "process here; no Dataflow job measured). Use your own figure from a small run.")
    add("--overwrite", type=str2bool, nargs="?", const=True, default=False,
        help="Replace an existing checkpoint at the output path (refused otherwise).")
    add("--resume", type=str2bool, nargs="?", const=True, default=False,
        help="Finish an interrupted conversion at the same output: slices already stored are kept, only "
             "the missing ones are written, then it commits.")
    add("--verify_report", default=None,
        help="verify: where the per-array verdicts go (JSON; default a local temp file, which only a local "
             "runner can use: give a gs:// path on Dataflow).")
    add("--progress", type=str2bool, nargs="?", const=True, default=True,
        help="Show tensors done / total while a local runner works. Default true.")
    add("--verbose", type=str2bool, nargs="?", const=True, default=False,
        help="On an error or an interrupt, also print the traceback (and Beam's own log lines).")
    add("--wait", type=str2bool, nargs="?", const=True, default=False,
        help="On Dataflow, block until the job ends and print its counters. Default false: submit, print the "
             "job id and return (the output is committed inside the job, after every write).")
    add("--lazy_load_tensors", type=str2bool, nargs="?", const=True, default=True,
        help="Accepted for MaxText compatibility; ckptflow always streams one tensor at a time.")
    add("--eager_load_method", default=None,
        help="Accepted for MaxText compatibility and ignored.")
    add("--revision", default=None,
        help="Branch, tag or commit of a Hub source (default main); resolved to one commit for the whole run.")
    add("--hf_lora_adapter_path", default=None,
        help="to_maxtext: a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors; local, gs:// or a Hub "
             "repo). Alone: an adapter-only MaxText checkpoint at <base_output_directory>/<model_name>/<adapter>/0/items. "
             "With load_parameters_path= (MaxText's merged mode) or --merge_lora: the base model (--hf_model_path) with "
             "the adapter merged in, W + (lora_alpha / r) B A.")
    add("--merge_lora", type=str2bool, nargs="?", const=True, default=False,
        help="to_maxtext: merge --hf_lora_adapter_path into the base model (the same as MaxText's load_parameters_path= "
             "in its merged mode).")
    add("--lora_restore_path", "--lora.lora_restore_path", dest="lora_restore_path", default=None,
        help="to_huggingface: a MaxText LoRA adapter checkpoint (.../0/items, its step directory, or a run's "
             "checkpoints/). Alone: a PEFT adapter directory; with load_parameters_path: the merged HF model.")
    add("--lora_rank", "--lora.lora_rank", dest="lora_rank", type=int, default=None,
        help="LoRA rank. Read from the adapter (adapter_config.json, or the MaxText checkpoint's shapes); when given "
             "it must agree.")
    add("--lora_alpha", "--lora.lora_alpha", dest="lora_alpha", type=float, default=None,
        help="LoRA alpha. Read from the adapter (adapter_config.json, or the MaxText checkpoint's metadata); when "
             "given it must agree. Needed for a MaxText adapter checkpoint that does not record it.")
    add("--step", type=int, default=None,
        help="to_huggingface, when load_parameters_path is a training run's checkpoints/ directory: the step to "
             "convert (default: the latest committed one).")
    add("--all_steps", type=str2bool, nargs="?", const=True, default=False,
        help="to_huggingface: convert every committed step of the run at load_parameters_path into "
             "<base_output_directory>/<step>/, skipping steps whose output is up to date.")


# Accepted so MaxText command lines run unchanged; no command reads them.
MAXTEXT_COMPATIBILITY = ("lazy_load_tensors", "eager_load_method")
