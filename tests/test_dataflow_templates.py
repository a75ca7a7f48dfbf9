"""The flex templates match the CLIs: parameters, validation regexes, image and pinned dependencies."""
import json
import os
import re
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from packaging.requirements import Requirement

from pipeline import options as options_module
from pipeline import template_metadata, to_huggingface_job, to_maxtext_job, verify
from pipeline.options import ConversionOptions, str2bool
from pipeline.plan_hf import parse_size
from tests.goldens import REPO

DIRECTIONS = sorted(template_metadata.DIRECTIONS)


def checked_in(direction):
  with open(template_metadata.path(direction), encoding="utf-8") as f:
    return f.read()


def parameters(direction):
  return {p["name"]: p for p in json.loads(checked_in(direction))["parameters"]}


def cli_value(name, text):
  """What the CLI's parser makes of --name=text (argparse errors exit)."""
  return getattr(PipelineOptions([f"--{name}={text}"]).view_as(ConversionOptions), name)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_checked_in_metadata_is_what_the_generator_makes_now(direction):
  assert checked_in(direction) == template_metadata.render(direction), \
      "run: python -m pipeline.template_metadata"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_parameters_are_exactly_the_commands_options(direction):
  command = template_metadata.DIRECTIONS[direction]
  params = parameters(direction)
  cli_options = set(template_metadata.actions())
  beam_options = set(PipelineOptions([]).get_all_options(drop_default=False)) - cli_options
  assert {"runner", "project", "num_workers", "sdk_container_image"} <= beam_options
  # Every parameter is a real option of the command, never one of Beam's (--runner, --project ...).
  assert set(params) <= set(command.OPTIONS) <= cli_options
  assert not set(params) & beam_options
  # Every option of the command is a parameter, except the few a submit-and-return launcher cannot use.
  assert set(command.OPTIONS) - set(params) == set(template_metadata.NOT_TEMPLATE_PARAMETERS) & set(command.OPTIONS)
  assert [n for n in command.OPTIONS if n in params] == list(params)  # same order as the command lists them
  assert {n for n, p in params.items() if not p["isOptional"]} == set(command.REQUIRED)
  actions = template_metadata.actions()
  for name, p in params.items():
    assert p["label"] and p["regexes"] and p["helpText"].startswith(" ".join(actions[name].help.split()))


@pytest.mark.parametrize("command", [to_maxtext_job, to_huggingface_job, verify])
def test_each_command_declares_every_option_it_reads(command):
  with open(command.__file__, encoding="utf-8") as f:
    source = f.read()
  read = set(re.findall(r"\bconv\.(\w+)", source))
  assert read and read <= set(command.OPTIONS)


def test_every_option_belongs_to_a_command():
  claimed = set(to_maxtext_job.OPTIONS) | set(to_huggingface_job.OPTIONS) | set(verify.OPTIONS)
  assert set(template_metadata.actions()) == claimed | set(options_module.MAXTEXT_COMPATIBILITY)


# Values each regex must reject: Dataflow refuses them before a launcher VM starts.
BAD = {
    "hf_model_path": ["/data/Llama-3.1-8B", "gs://", "s3://bucket/model", "gs://Bad_Bucket/x", "gs://b/x\nfoo"],
    "base_output_directory": ["hf://me/model", "/tmp/out", "gs:/bucket/out", "bucket/out"],
    "load_parameters_path": ["./ckpt/0/items", "gs://b", "file:///ckpt/0/items"],
    "load_full_state_path": ["run/checkpoints/2/items", "gs://", "/ckpt/2/items"],
    "force_unroll": ["unroll"],
    "model_name": ["Llama 3.1", "-llama", "llama/8b", ""],
    "scan_layers": ["maybe", "truee", ""],
    "weight_dtype": ["fp8", "bf16", "float64"],
    "save_dtype": ["float16", "int8"],
    "max_shard_size": ["5 gigs", "IB", "-1GB", "5G", "GB"],
    "simulated_cpu_devices_count": ["0", "-4", "1.5", "sixteen"],
    "vocab_size": ["0", "-1", "128k"],
    "zstd_level": ["23", "-1", "100"],
    "use_multimodal": ["2"],
    "checkpoint_storage_use_zarr3": ["zarr3"],
    "checkpoint_storage_use_ocdbt": ["ocdbt", "t"],
    "overwrite": ["please"],
    "resume": ["y es"],
    "max_element_size": ["256 megs", "-1MB"],
    "quantize_fp8_blocks": ["fp8"],
    "revision": ["main branch", ""],
    "hf_cache_dir": ["/tmp/cache", "hf://a/b"],
    "hf_lora_adapter_path": ["/data/my-lora", "my-user/my-lora", "gs://"],
    "merge_lora": ["merge"],
    "lora_restore_path": ["./lora/0/items", "hf://a/b"],
    "lora_rank": ["0", "-4", "r16"],
    "lora_alpha": ["-8", "alpha", ""],
    "step": ["-1", "latest", ""],
}
# Further values each regex accepts, which the CLI must parse too.
GOOD = {
    "max_shard_size": ["5GB", "500MB", "2GiB", "100KB", "1000000", "1.5GB", "5gb"],
    "zstd_level": ["0", "3", "22"],
    "hf_model_path": ["gs://my-bucket/a b/model", "gs://my.bucket_1/x/", "hf://Qwen/Qwen3-4B", "hf://org/repo@v1.0"],
    "model_name": ["qwen3-0.6b", "gpt-oss-20b", "deepseek3-671b"],
}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_regexes_accept_the_documented_examples_and_reject_bad_values(direction):
  actions = template_metadata.actions()
  for name, p in parameters(direction).items():
    (pattern,) = p["regexes"]
    documented = re.search(r"Example: (\S+)$", p["helpText"]).group(1)
    accepted = [documented, *GOOD.get(name, ())]
    if actions[name].choices:
      accepted += list(actions[name].choices)
    if actions[name].type is str2bool:
      accepted += re.fullmatch(r"\^\((.*)\)\$", pattern).group(1).split("|")
    for value in accepted:
      assert re.fullmatch(pattern, value), (name, value)
      parsed = cli_value(name, value)
      assert parsed is not None, (name, value)
      if name == "max_shard_size":
        assert parse_size(parsed) > 0
    assert name in BAD, f"add rejected values for {name}"
    for value in BAD[name]:
      assert not re.fullmatch(pattern, value), (name, value)


def setup_version():
  return subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True, text=True,
                        check=True).stdout.strip().splitlines()[-1]


def install_requires():
  source = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
  block = re.search(r"install_requires=\[(.*?)\n\s*\]", source, re.S).group(1)
  return [Requirement(r) for r in re.findall(r'"([^"]+)"', block)]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_dockerfile_installs_the_version_the_repo_builds_on_the_pinned_beam(direction):
  with open(os.path.join(REPO, "dataflow_templates", "Dockerfile"), encoding="utf-8") as f:
    dockerfile = f.read()
  assert re.search(r"^ARG CKPTFLOW_VERSION=(\S+)$", dockerfile, re.M).group(1) == setup_version()
  assert re.search(r"pip install --no-cache-dir --no-deps \.", dockerfile)
  beam = next(r for r in install_requires() if r.name == "apache-beam")
  (pinned,) = [s.version for s in beam.specifier if s.operator == "=="]
  image = re.search(r"^ARG BEAM_IMAGE=apache/beam_python(\d)\.(\d+)_sdk:(\S+)$", dockerfile, re.M)
  assert image.group(3) == pinned
  python = f"{image.group(1)}{image.group(2)}"
  assert re.search(rf"^ARG LAUNCHER_IMAGE=gcr\.io/dataflow-templates-base/python{python}-template-launcher-base",
                   dockerfile, re.M)
  launcher = "/opt/google/dataflow/python_template_launcher"
  assert f"COPY --from=launcher {launcher} {launcher}" in dockerfile
  assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile
  assert f"test \"$DIRECTION\" = {direction}" in dockerfile  # the one image builds either direction
  py_file = re.search(r"^ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/(\S+)$", dockerfile, re.M).group(1)
  assert py_file == "dataflow_templates/${DIRECTION}/main.py" and f"COPY {py_file} {py_file}" in dockerfile
  assert os.path.exists(os.path.join(REPO, py_file.replace("${DIRECTION}", direction)))
  for package in ("models", "pipeline", "transforms"):
    assert f"COPY {package} {package}" in dockerfile


def test_requirements_pin_exactly_the_runtime_dependencies():
  with open(os.path.join(REPO, "dataflow_templates", "requirements.txt"), encoding="utf-8") as f:
    pins = [Requirement(line) for line in f.read().splitlines() if line.strip() and not line.startswith("#")]
  wanted = {r.name: r for r in install_requires()}
  assert sorted(p.name for p in pins) == sorted(wanted)
  for pin in pins:
    (spec,) = pin.specifier
    assert spec.operator == "==" and wanted[pin.name].specifier.contains(spec.version), pin
    assert pin.extras == wanted[pin.name].extras
  assert not {"torch", "transformers", "jax", "jaxlib"} & {p.name for p in pins}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_launcher_program_runs_the_command(direction):
  done = subprocess.run([sys.executable, os.path.join("dataflow_templates", direction, "main.py"), "--help"],
                        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
  assert done.returncode == 0 and f"python -m pipeline.{direction}" in done.stdout
