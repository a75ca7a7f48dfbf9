"""The `ckptflow` command: one entry point, subcommands, --version, per-command help, any directory."""
import ast
import os
import re
import subprocess
import sys

import pytest

from pipeline import command, to_huggingface_job, usage
from tests import goldens
from tests.test_to_huggingface import assert_same_model, tensors
from tests.test_to_maxtext import IN_PROCESS

# What pip's console-script wrapper runs (setup.py: ckptflow = pipeline.command:main); with -c the
# current directory is first on sys.path, as a `python -m` from there would have it.
CONSOLE_SCRIPT = "import sys; from pipeline.command import main; sys.argv[0] = 'ckptflow'; sys.exit(main())"


def ckptflow(*args, cwd):
  env = {**os.environ, "PYTHONPATH": goldens.REPO}
  return subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch):
  """command.main may take the current directory off sys.path and set PYTHONSAFEPATH / PYTHONPATH."""
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("PYTHONSAFEPATH", "")  # recorded (also when unset), so what command.main sets is undone
  monkeypatch.delenv("PYTHONSAFEPATH")


@pytest.fixture
def foreign_dir(tmp_path):
  """A directory whose `models/` package and `transforms.py` would shadow ckptflow's own."""
  where = tmp_path / "elsewhere"
  (where / "models").mkdir(parents=True)
  (where / "models" / "__init__.py").write_text("raise ImportError('the models/ of the current directory')\n")
  (where / "transforms.py").write_text("raise ImportError('the transforms.py of the current directory')\n")
  return where


def test_setup_installs_one_ckptflow_command():
  with open(os.path.join(goldens.REPO, "setup.py")) as f:
    tree = ast.parse(f.read())
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
  entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
  assert entry_points == {"console_scripts": ["ckptflow = pipeline.command:main"]}
  assert set(command.SUBCOMMANDS) == {"to_maxtext", "to_huggingface", "check_logits", "verify", "plan", "batch", "demo"}
  for name in command.SUBCOMMANDS:  # each runs the module `python -m pipeline.<name>` runs
    assert os.path.exists(os.path.join(goldens.REPO, "pipeline", f"{name}.py"))


def test_converts_from_a_directory_with_its_own_models_package(foreign_dir, tmp_path):
  out = tmp_path / "out"
  hf = goldens.copy_hf("qwen3", str(tmp_path / "hf"))
  p = ckptflow("to_maxtext", "model_name=qwen3-0.6b", f"base_output_directory={out}", f"--hf_model_path={hf}",
               "--direct_num_workers=1", "--progress=false", cwd=foreign_dir)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip() == f"wrote {out}/0/items (load_parameters_path={out}/0/items)"
  goldens.assert_same_checkpoint(goldens.restore(f"{out}/0/items"), goldens.restore(goldens.items("qwen3", "scan")))
  p = ckptflow("--version", cwd=foreign_dir)
  assert p.returncode == 0 and re.fullmatch(r"ckptflow \S+.*", p.stdout.strip())


def test_errors_of_the_command_itself_are_one_line(capsys):
  assert command.main(["to_maxtxt"]) == 2
  assert capsys.readouterr().err.strip() == "error: unknown command 'to_maxtxt' (did you mean to_maxtext?)"
  assert command.main([]) == 2 and "usage: ckptflow" in capsys.readouterr().out


def test_isolate_from_cwd_keeps_the_checkout_it_runs_from(foreign_dir, monkeypatch):
  monkeypatch.chdir(foreign_dir)
  monkeypatch.setattr(sys, "path", ["", str(foreign_dir), "/usr/lib/python3"])
  monkeypatch.setenv("PYTHONPATH", "/elsewhere")
  command.isolate_from_cwd()
  assert sys.path == [command.ROOT, "/usr/lib/python3"]
  # The local runner's workers start in this directory too: not from it, but from this checkout.
  assert os.environ["PYTHONSAFEPATH"] == "1" and os.environ["PYTHONPATH"] == os.pathsep.join([command.ROOT, "/elsewhere"])
  monkeypatch.chdir(command.ROOT)
  monkeypatch.setattr(sys, "path", ["", "/usr/lib/python3"])
  command.isolate_from_cwd()  # python -m pipeline.X from the repo root: its own checkout
  assert sys.path == ["", "/usr/lib/python3"]


def help_of(name, capsys):
  status = command.main([name, "--help"])
  out = capsys.readouterr().out
  assert status == 0
  return out


@pytest.mark.parametrize("name, absent", [
    ("to_maxtext", ("--weight_dtype_x", "--max_shard_size", "--verify_report", "--quantize_fp8_blocks", "--all_steps")),
    ("to_huggingface", ("--save_dtype", "--load_full_state_path", "--force_unroll", "--verify_report",
                        "--checkpoint_storage_use_ocdbt")),
    ("verify", ("--save_dtype", "--max_shard_size", "--overwrite")),
])
def test_help_shows_only_the_commands_own_options_grouped(capsys, name, absent):
  text = help_of(name, capsys)
  dry_run = " [--dry_run]" if name != "verify" else ""
  assert text.startswith(f"usage: ckptflow {name} [-h]{dry_run} key=value ...")
  for flag in absent:
    assert f"  {flag}" not in text, flag
  groups = re.findall(r"^(source|output|storage|run):$", text, flags=re.M)
  assert groups[0] == "source" and groups[-1] == "run"
  assert f"example:\n  ckptflow {name} " in text


def test_every_option_a_command_shows_has_help_for_that_command():
  calls = usage.option_calls()
  for name, options in (("to_maxtext", usage.KEYS["to_maxtext"]), ("to_huggingface", to_huggingface_job.OPTIONS)):
    for option in options:
      dest = option.split(".")[-1]
      assert calls[dest][1].get("help"), option
      shown = usage.own_help(calls[dest][1]["help"], name)
      other = "to_huggingface:" if name == "to_maxtext" else "to_maxtext:"
      assert shown and other not in shown, (name, option, shown)


@pytest.mark.parametrize("name", ["check_logits", "plan", "batch", "demo"])
def test_every_subcommand_has_help(capsys, name):
  assert help_of(name, capsys).strip()


def test_the_to_huggingface_example_works_on_a_scanned_checkpoint(tmp_path, capsys):
  """The example of --help, with the golden's paths and model name in place of the placeholders."""
  line = usage.EXAMPLES["to_huggingface"][0].format(prog="ckptflow to_huggingface")
  words = line.split()[2:]
  hf = goldens.copy_hf("qwen3", str(tmp_path / "hf"))
  given = {"model_name": "qwen3-0.6b", "load_parameters_path": goldens.items("qwen3", "scan"),
           "base_output_directory": str(tmp_path / "back"), "--hf_model_path": hf}
  args = [f"{w.split('=')[0]}={given[w.split('=')[0]]}" for w in words]
  assert len(args) == 4 and not any(a.startswith("scan_layers") for a in args)
  assert command.main(["to_huggingface", *args, *IN_PROCESS, "--progress=false"]) == 0, capsys.readouterr().err
  assert_same_model(tensors(tmp_path / "back"), tensors(hf), "qwen3")
  assert (tmp_path / "back" / "config.json").exists()


def test_python_m_from_the_repo_root_keeps_working():
  p = subprocess.run([sys.executable, "-m", "pipeline.plan", "--help"], cwd=goldens.REPO, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 0 and p.stdout.startswith("usage: python -m pipeline.plan [-h] key=value")
