"""A command line that lets no typo through: unknown keys and flags, bad values, model names, paths.

Every refusal is one `error:` line on stderr, exit 2, and nothing is written.
"""
import glob
import json
import os
import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, hub, maxtext_config, to_huggingface_job, to_maxtext_job
from pipeline.options import ConversionOptions
from models.known_configs import known_model_names
from transforms.errors import ConversionError
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS


def run(main, args, capsys):
  """(exit status, stderr lines) of a command run in-process as its __main__ runs it."""
  status = cli.run_main(main, list(args))
  return status, capsys.readouterr().err.strip().splitlines()


def refused(main, args, capsys, expect: str) -> None:
  status, lines = run(main, args, capsys)
  assert status == 2 and lines == [f"error: {expect}"], lines


@pytest.fixture
def hf(tmp_path):
  return goldens.copy_hf("llama3.1", str(tmp_path / "hf"))


@pytest.mark.parametrize("word, expect", [
    ("scan_layer=false", "unknown key 'scan_layer' (did you mean scan_layers?)"),
    ("base_output_dir=/x", "unknown key 'base_output_dir' (did you mean base_output_directory?)"),
    ("--overwirte", "unknown flag --overwirte (did you mean --overwrite?)"),
    ("--hf_modle_path=/x", "unknown flag --hf_modle_path (did you mean --hf_model_path?)"),
    ("--direct_num_worker=2", "unknown flag --direct_num_worker (did you mean --direct_num_workers?)"),
])
def test_a_typo_is_one_line_and_writes_nothing(tmp_path, hf, capsys, word, expect):
  out = tmp_path / "out"
  refused(to_maxtext_job.main, [f"base_output_directory={out}", f"--hf_model_path={hf}", word], capsys, expect)
  assert not out.exists()


def test_a_typo_on_the_way_back_writes_nothing(tmp_path, capsys):
  out = tmp_path / "back"
  refused(to_huggingface_job.main, [f"load_parameters_path={goldens.items('llama3.1', 'scan')}",
                                    f"base_output_directory={out}", "--overwirte"], capsys,
          "unknown flag --overwirte (did you mean --overwrite?)")
  assert not out.exists()


@pytest.mark.parametrize("word", ["load_full_state_path=/run/3/items", "force_unroll=true"])
def test_a_key_of_the_other_command_is_refused_as_such(tmp_path, capsys, word):
  key = word.split("=")[0]
  refused(to_huggingface_job.main, [f"load_parameters_path={goldens.items('llama3.1', 'scan')}",
                                    f"base_output_directory={tmp_path / 'back'}", word], capsys,
          f"{key}= is an option of to_maxtext, not of to_huggingface; drop it (or run to_maxtext)")
  assert not (tmp_path / "back").exists()


def test_maxtext_keys_we_do_not_use_are_noted_and_the_run_goes_on(tmp_path, hf, capsys):
  status, lines = run(to_maxtext_job.main, [f"base_output_directory={tmp_path / 'out'}", f"--hf_model_path={hf}",
                                            "hardware=cpu", "per_device_batch_size=1", "--dry_run"], capsys)
  assert status == 0
  assert lines == ["note: ignored 'hardware=cpu': it only matters to MaxText itself",
                   "note: ignored 'per_device_batch_size=1': it only matters to MaxText itself"]


def test_translate_refuses_unknown_keys_but_knows_every_maxtext_one():
  assert maxtext_config.commit().startswith("e591f30")
  with pytest.raises(ConversionError, match=r"^unknown key 'scan_layer' \(did you mean scan_layers\?\)$"):
    cli.translate(["scan_layer=true"], to_maxtext_job.MAXTEXT_KEYS, "to_maxtext")
  with pytest.raises(ConversionError, match=r"^unknown key 'zzzz'$"):  # nothing close: no guess
    cli.translate(["zzzz=1"], to_maxtext_job.MAXTEXT_KEYS, "to_maxtext")
  flags, notes = cli.translate(["skip_jax_distributed_system=true", "lora.enable_lora=false", "tokenizer_path=t"],
                               to_maxtext_job.MAXTEXT_KEYS, "to_maxtext")
  assert flags == [] and len(notes) == 3


@pytest.mark.parametrize("flag, expect", [
    ("--save_dtype=int8", "--save_dtype: invalid choice: 'int8' (choose from 'bfloat16', 'float32')"),
    ("--simulated_cpu_devices_count=many", "--simulated_cpu_devices_count: invalid int value: 'many'"),
    ("scan_layers=maybe", "--scan_layers: expected true or false, got 'maybe'"),
    ("--zstd_level=", "--zstd_level: invalid int value: ''"),
])
def test_a_bad_value_is_one_line_not_a_usage_dump(tmp_path, hf, capsys, flag, expect):
  out = tmp_path / "out"
  refused(to_maxtext_job.main, [f"base_output_directory={out}", f"--hf_model_path={hf}", flag], capsys, expect)
  assert not out.exists()


def test_dtype_aliases():
  def conv(*flags):
    cli.check_flags(flags)
    return PipelineOptions(list(flags)).view_as(ConversionOptions)
  assert conv("--save_dtype=bf16").save_dtype == "bfloat16"
  assert conv("--save_dtype=fp32").save_dtype == "float32"
  assert conv("--save_dtype=BF16").save_dtype == "bfloat16"
  assert conv("--weight_dtype=fp16").weight_dtype == "float16"
  assert conv("--weight_dtype=float16").weight_dtype == "float16"
  assert conv("--weight_dtype=fp32").weight_dtype == "float32"
  with pytest.raises(ConversionError, match="--save_dtype: invalid choice: 'float16'"):
    conv("--save_dtype=fp16")  # MaxText saves bfloat16 or float32 only


def test_dtype_alias_reaches_the_written_checkpoint(tmp_path, hf, capsys):
  out = tmp_path / "out"
  status, lines = run(to_maxtext_job.main, [f"base_output_directory={out}", f"--hf_model_path={hf}",
                                            "--save_dtype=fp32", *IN_PROCESS, "--progress=false"], capsys)
  assert status == 0, lines
  restored = goldens.restore(str(out / "0" / "items"))
  assert {str(a.dtype) for name, a in restored.items() if name.startswith("params/")} == {"float32"}


@pytest.mark.parametrize("name, expect", [
    ("qwen3-banana", "model_name=qwen3-banana is not a MaxText model name (did you mean "),
    ("qwen3-0.6B", "model_name=qwen3-0.6B is not a MaxText model name (did you mean qwen3-0.6b"),
    ("Llama3.1-8b", "model_name=Llama3.1-8b is not a MaxText model name (did you mean llama3.1-8b"),
    ("llama2-7b", "model_name=llama2-7b is a MaxText model ckptflow does not convert"),
])
def test_model_name_is_one_maxtext_has_exactly(tmp_path, hf, capsys, name, expect):
  out = tmp_path / "out"
  status, lines = run(to_maxtext_job.main, [f"base_output_directory={out}", f"--hf_model_path={hf}",
                                            f"model_name={name}"], capsys)
  assert status == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expect}"), lines
  assert not out.exists()


def test_the_table_script_reads_the_dimensions_we_compare():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("maxtext_tables", os.path.join(goldens.REPO, "scripts",
                                                                                "maxtext_tables.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.DIMENSIONS == maxtext_config.MAXTEXT_DIMENSIONS
  llama = {"base_emb_dim": 4096, "base_num_query_heads": 32, "base_num_kv_heads": 8, "vocab_size": 128256,
           "head_dim": 128, "base_num_decoder_layers": 32, "base_mlp_dim": 14336}  # configs/models/llama3.1-8b.yml
  assert llama.items() <= maxtext_config.model_dimensions("llama3.1-8b").items()
  assert maxtext_config.model_dimensions("llama3.1-8b-Instruct") == maxtext_config.model_dimensions("llama3.1-8b")


def test_every_built_in_model_name_is_maxtexts():
  assert set(known_model_names()) <= set(maxtext_config.model_names())
  assert "llama3.1-8b-Instruct" in maxtext_config.model_names()  # types.py's ModelName, not a yml of its own


def test_other_dimensions_get_one_note_with_the_overrides(hf, tmp_path, capsys):
  status, lines = run(to_maxtext_job.main, [f"base_output_directory={tmp_path / 'out'}", f"--hf_model_path={hf}",
                                            "model_name=llama3.1-8b", "--dry_run"], capsys)
  assert status == 0
  notes = [line for line in lines if line.startswith("note:")]
  assert notes == [f"note: {hf}/config.json has other dimensions than MaxText's llama3.1-8b; MaxText loads the result "
                   "with model_name=llama3.1-8b override_model_config=true base_emb_dim=64 base_num_query_heads=4 "
                   "base_num_kv_heads=2 vocab_size=512 head_dim=32 base_num_decoder_layers=3 base_mlp_dim=96"]


# MaxText dimension keys the tiny DeepSeek-V4 config cannot state: it has no dense MLP size (MaxText's yml has one).
NOT_IN_CONFIG = {"deepseek4": {"base_mlp_dim"}, "deepseek4-fp4": {"base_mlp_dim"}}


@pytest.mark.parametrize("meta", sorted(glob.glob(os.path.join(goldens.DATA, "goldens*", "*", "maxtext_model.json"))),
                         ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_overrides_are_those_maxtext_made_the_goldens_with(meta):
  """The goldens were written by MaxText itself with these overrides: ours must load the same model."""
  with open(meta) as f:
    made = json.load(f)
  config_path = os.path.join(os.path.dirname(meta), "hf", "config.json")
  if not os.path.exists(config_path):
    pytest.skip("no HF side")
  with open(config_path) as f:
    config = json.load(f)
  name = made["mt_model_name"]
  ours = dict(w.split("=") for w in maxtext_config.overrides(config, name))
  base = {k: str(v) for k, v in maxtext_config.model_dimensions(name).items()}
  theirs = {k: str(v) for k, v in made["mt_overrides"].items() if k in maxtext_config.MAXTEXT_DIMENSIONS}
  skip = NOT_IN_CONFIG.get(os.path.basename(os.path.dirname(meta)), set())
  for key in (set(ours) | set(theirs)) - skip:
    assert ours.get(key, base.get(key)) == theirs.get(key, base.get(key)), key


def test_a_checkpoint_the_built_in_config_does_not_describe_says_pass_hf_model_path(tmp_path, capsys):
  status, lines = run(to_huggingface_job.main, [f"load_parameters_path={goldens.items('qwen3', 'scan')}",
                                                f"base_output_directory={tmp_path / 'back'}", "model_name=qwen3-0.6b"],
                      capsys)
  assert status == 2 and len(lines) == 1
  assert "but the built-in config of qwen3-0.6b implies" in lines[0] and "pass --hf_model_path=" in lines[0]
  assert not os.listdir(tmp_path) or not (tmp_path / "back" / "config.json").exists()


@pytest.mark.parametrize("path", ["./models/qwen3x", "/nonexistent/qwen3", "~/surely-not-here-ckptflow",
                                  "models/qwen3/x", "../qwen3x"])
def test_a_path_that_does_not_exist_is_no_such_directory_at_once(tmp_path, capsys, path):
  start = time.monotonic()
  refused(to_maxtext_job.main, [f"base_output_directory={tmp_path / 'out'}", f"--hf_model_path={path}"], capsys,
          f"--hf_model_path={path}: no such directory (a Hub repo is written org/repo or hf://org/repo)")
  assert time.monotonic() - start < 5  # never a Hub request
  assert not (tmp_path / "out").exists()


def test_a_bare_org_repo_goes_to_the_hub_and_says_so(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert hub.source_repo("someorg/somerepo", None) == ("someorg/somerepo", None)
  assert hub.source_repo("someorg/somerepo", None) == ("someorg/somerepo", None)
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["note: --hf_model_path=someorg/somerepo is not a local directory: reading the Hugging Face Hub "
                 "repo someorg/somerepo"]  # once
  (tmp_path / "someorg" / "somerepo").mkdir(parents=True)
  assert hub.source_repo("someorg/somerepo", None) is None  # a local directory of that name wins
  assert hub.resolve_source("someorg/somerepo", None, None) == "someorg/somerepo"


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  (tmp_path / "model").mkdir()
  assert hub.resolve_source("~/model", None, None) == str(tmp_path / "model")


def test_every_command_refuses_in_one_line(tmp_path, capsys):
  from pipeline import batch, check_logits, demo, verify  # pylint: disable=import-outside-toplevel
  refused(batch.main, [], capsys, "the jobs file comes first: python -m pipeline.batch jobs.yaml [--flag=value ...] "
                                  "(see --help)")
  refused(check_logits.main, ["load_parameters_path=x", "--top_kk=3"], capsys,
          "unknown flag --top_kk (did you mean --top_k?)")
  refused(check_logits.main, ["load_parameters_path=x", "--top_k=many"], capsys,
          "--top_k: invalid int value: 'many'")
  refused(demo.main, ["--layers=two"], capsys, "--layers: invalid int value: 'two'")
  refused(verify.main, ["load_parameters_path=x", "max_shard_size=1GB"], capsys,
          "max_shard_size= is an option of to_huggingface, not of verify; drop it (or run to_huggingface)")
  assert not os.listdir(tmp_path)
  # check_logits hands MaxText's keys to MaxText's own config: never "an option of to_maxtext" there.
  assert cli.translate(["weight_dtype=bfloat16"], check_logits.MAXTEXT_KEYS)[1] == [
      "ignored 'weight_dtype=bfloat16': it only matters to MaxText itself"]
