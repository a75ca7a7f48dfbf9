"""pipeline.batch: which conversions are skipped and which are redone, and a whole batch run."""
import json
import os
import shutil

import pytest

from pipeline import batch, cli
from transforms.errors import ConversionError
from tests import goldens
from tests.gcs_emulator import upload_dir
from tests.test_dataflow import DATAFLOW, submitted  # noqa: F401  (a fixture) pylint: disable=unused-import
from tests.test_to_maxtext import IN_PROCESS
from tests.test_to_maxtext import convert as to_maxtext
from transforms import storage

QUIET = (*IN_PROCESS, "--progress=false")


def job(direction, source, destination, *options):
  flag = batch.SOURCE_OPTION[direction]
  return batch.Job("j", direction, str(source), str(destination),
                   (*QUIET, *options, f"--{flag}={source}", f"--base_output_directory={destination}"))


@pytest.fixture
def converted(tmp_path):
  """A copy of the llama golden and its committed MaxText conversion (scanned)."""
  hf = goldens.copy_hf("llama3.1", str(tmp_path / "hf"))
  out = tmp_path / "out"
  to_maxtext(hf, out, "--scan_layers=true")
  return hf, out


def test_unchanged_output_is_skipped(converted):
  hf, out = converted
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == batch.Decision(False, "up to date")


def test_touched_source_is_redone(converted):
  hf, out = converted
  shard = os.path.join(hf, "model.safetensors")
  stat = os.stat(shard)
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == \
      batch.Decision(True, f"source {shard} changed")


def test_edited_config_json_is_redone(converted):
  hf, out = converted
  config = os.path.join(hf, "config.json")
  with open(config, "a", encoding="utf-8") as f:
    f.write("\n")
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == \
      batch.Decision(True, f"source {config} changed")


def test_removed_source_is_redone(converted):
  hf, out = converted
  shard = os.path.join(hf, "model.safetensors")
  os.remove(shard)
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == \
      batch.Decision(True, f"source {shard} is gone")


@pytest.mark.parametrize("options, reason", [
    (("--scan_layers=false",), "option scan_layers changed: True -> False"),
    (("--scan_layers=true", "--save_dtype=float32"), "option save_dtype changed: None -> 'float32'"),
    (("--scan_layers=true", "--zstd_level=3"), "option zstd_level changed: 1 -> 3"),
    # Not given is not the same as given: the recorded value is what the run was told.
    ((), "option scan_layers changed: True -> None"),
])
def test_changed_options_are_redone(converted, options, reason):
  hf, out = converted
  assert batch.decide(job("to_maxtext", hf, out, *options)) == batch.Decision(True, reason)


def test_how_a_run_went_is_not_an_option_that_changes_the_output(converted):
  hf, out = converted
  assert not batch.decide(job("to_maxtext", hf, out, "--scan_layers=true", "--resume", "--overwrite")).run
  assert not batch.decide(job("to_maxtext", hf, out, "--scan_layers=true", "--runner=DirectRunner")).run


def test_incomplete_output_is_redone(converted):
  hf, out = converted
  os.remove(out / "0" / "commit_success.txt")
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == \
      batch.Decision(True, "output incomplete (never committed)")


def test_missing_or_unreadable_manifest_is_redone(converted):
  hf, out = converted
  manifest = out / "0" / "ckptflow_manifest.json"
  manifest.write_text("{not json")
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == \
      batch.Decision(True, "no readable ckptflow_manifest.json")
  os.remove(manifest)
  assert batch.decide(job("to_maxtext", hf, out, "--scan_layers=true")) == \
      batch.Decision(True, "no readable ckptflow_manifest.json")


def test_missing_output_is_done(tmp_path):
  hf = goldens.path("llama3.1", "hf")
  assert batch.decide(job("to_maxtext", hf, tmp_path / "none")) == batch.Decision(True, "no output yet")


def test_to_huggingface_output_is_judged_by_its_manifest_beside_config_json(tmp_path):
  """The MaxText -> HF manifest: <out>/ckptflow_manifest.json, sources = the checkpoint's files."""
  ckpt = tmp_path / "ckpt"
  shutil.copytree(goldens.path("qwen3", "maxtext_scan"), ckpt)
  items, out = str(ckpt / "0" / "items"), tmp_path / "hf"
  this = job("to_huggingface", items, out, "--max_shard_size=1GB")
  assert batch.decide(this) == batch.Decision(True, "no output yet")
  out.mkdir()
  (out / "model.safetensors").write_bytes(b"partial")
  assert batch.decide(this) == batch.Decision(True, "output incomplete (never committed)")
  (out / "config.json").write_text("{}")
  assert batch.decide(this) == batch.Decision(True, "no readable ckptflow_manifest.json")
  files = [storage.join(items, f) for f in storage.find(items)]
  options = this.options()
  (out / "ckptflow_manifest.json").write_text(json.dumps({
      "tool": "ckptflow", "version": "0.1.0", "direction": "to_huggingface", "family": "qwen3", "created": "",
      "options": {k: getattr(options, k) for k in ("load_parameters_path", "weight_dtype", "max_shard_size",
                                                   "scan_layers", "resume")},
      "sources": {f: storage.fingerprint(f) for f in files}, "tensors": {}}))
  assert batch.decide(this) == batch.Decision(False, "up to date")
  assert batch.decide(job("to_huggingface", items, out, "--max_shard_size=2GB")).reason == \
      "option max_shard_size changed: '1GB' -> '2GB'"
  with open(files[-1], "ab") as f:
    f.write(b"\0")
  assert batch.decide(this) == batch.Decision(True, f"source {files[-1]} changed")
  # A to_maxtext manifest at a to_huggingface job's output does not count.
  to_mt = job("to_maxtext", goldens.path("qwen3", "hf"), tmp_path / "mt")
  os.makedirs(tmp_path / "mt" / "0")
  (tmp_path / "mt" / "0" / "commit_success.txt").write_text("")
  (tmp_path / "mt" / "0" / "ckptflow_manifest.json").write_text(json.dumps({"direction": "to_huggingface"}))
  assert batch.decide(to_mt) == batch.Decision(True, "the output was made by to_huggingface")


def write_yaml(path, text):
  path.write_text(text)
  return str(path)


def test_jobs_file_flags_and_precedence(tmp_path):
  jobs = batch.load_jobs(write_yaml(tmp_path / "jobs.yaml", """
defaults: [--zstd_level=3, --save_dtype=float32, hardware=cpu]
jobs:
  - name: a
    direction: to_maxtext
    source: /src/a
    destination: gs://b/a
    options: [model_name=llama3.1-8b, scan_layers=false, --zstd_level=5]
  - direction: to_huggingface
    source: gs://b/a/0/items
    destination: gs://b/hf
"""), ["--save_dtype=bfloat16"])
  a, b = jobs
  options = a.options()
  assert (options.zstd_level, options.save_dtype, options.model_name, options.scan_layers) == (5, "bfloat16",
                                                                                               "llama3.1-8b", False)
  assert (options.hf_model_path, options.base_output_directory) == ("/src/a", "gs://b/a")
  assert b.name == "to_huggingface gs://b/a/0/items" and b.options().load_parameters_path == "gs://b/a/0/items"


@pytest.mark.parametrize("text, message", [
    ("jobs: []", "expected a mapping with a non-empty 'jobs:' list"),
    ("job: []", "expected a mapping with a non-empty 'jobs:' list"),
    ("jobs: [{direction: to_orbax, source: a, destination: b}]",
     "job 1: direction must be to_maxtext or to_huggingface"),
    ("jobs: [{direction: to_maxtext, source: a}]", "job 1: source and destination are required paths"),
    ("jobs: [{direction: to_maxtext, source: a, destination: b, flags: []}]", "job 1: unknown key 'flags'"),
    ("jobs: [{direction: to_maxtext, source: a, destination: b, options: [hf_model_path=c]}]",
     "job 1 (to_maxtext a): hf_model_path comes from source/destination; drop it from options"),
    ("jobs: [{direction: to_maxtext, source: a, destination: b, options: --resume}]",
     "expected a list of key=value / --flag=value words"),
    ("jobs: [{direction: to_maxtext, source: a, destination: b, options: [resume]}]", "unexpected argument 'resume'"),
    ("jobs: [a: b: c]", "not valid YAML"),
])
def test_bad_jobs_files_fail_in_one_line_before_anything_runs(tmp_path, text, message):
  with pytest.raises(ConversionError, match=None) as e:
    batch.load_jobs(write_yaml(tmp_path / "jobs.yaml", text))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_batch_runs_skips_and_redoes(tmp_path, capsys):
  """Two conversions of one source: done, then skipped, then redone after the source is touched."""
  hf = goldens.copy_hf("llama3.1", str(tmp_path / "hf"))
  jobs = write_yaml(tmp_path / "jobs.yaml", f"""
defaults: [{", ".join(QUIET)}]
jobs:
  - name: scanned
    direction: to_maxtext
    source: {hf}
    destination: {tmp_path / "scan"}
    options: [scan_layers=true]
  - name: unscanned
    direction: to_maxtext
    source: {hf}
    destination: {tmp_path / "unscan"}
    options: [scan_layers=false]
""")
  assert cli.run_main(batch.main, [jobs]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("scanned: converted in ") and lines[0].endswith("(no output yet)")
  assert lines[1].startswith("unscanned: converted in ")
  assert lines[2] == "2 jobs: 0 skipped, 0 failed"
  for layout in ("scan", "unscan"):
    goldens.assert_same_checkpoint(goldens.restore(str(tmp_path / layout / "0" / "items")),
                                   goldens.restore(goldens.items("llama3.1", layout)))
  first = (tmp_path / "scan" / "0" / "ckptflow_manifest.json").read_text()

  assert cli.run_main(batch.main, [jobs]) == 0
  assert capsys.readouterr().out.splitlines() == ["scanned: skipped (up to date)", "unscanned: skipped (up to date)",
                                                  "2 jobs: 2 skipped, 0 failed"]
  assert (tmp_path / "scan" / "0" / "ckptflow_manifest.json").read_text() == first

  shard = os.path.join(hf, "model.safetensors")
  os.utime(shard, ns=(os.stat(shard).st_atime_ns, os.stat(shard).st_mtime_ns + 1_000_000_000))
  assert cli.run_main(batch.main, [jobs]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("scanned: converted in ") and lines[0].endswith(f"(source {shard} changed)")
  assert lines[1].startswith("unscanned: converted in ") and lines[1].endswith(f"(source {shard} changed)")
  manifest = json.loads((tmp_path / "scan" / "0" / "ckptflow_manifest.json").read_text())
  assert manifest["sources"][shard] == storage.fingerprint(shard)
  goldens.assert_same_checkpoint(goldens.restore(str(tmp_path / "scan" / "0" / "items")),
                                 goldens.restore(goldens.items("llama3.1", "scan")))


def test_a_failing_job_does_not_stop_the_others(tmp_path, capsys):
  hf = goldens.copy_hf("qwen3", str(tmp_path / "hf"))
  jobs = write_yaml(tmp_path / "jobs.yaml", f"""
defaults: [{", ".join(QUIET)}]
jobs:
  - name: broken
    direction: to_maxtext
    source: {tmp_path / "nowhere"}
    destination: {tmp_path / "a"}
  - name: fine
    direction: to_maxtext
    source: {hf}
    destination: {tmp_path / "b"}
""")
  assert cli.run_main(batch.main, [jobs]) == 1
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == (f"broken: FAILED: --hf_model_path={tmp_path / 'nowhere'}: no such directory (a Hub repo is "
                      "written org/repo or hf://org/repo)")
  assert lines[1].startswith("fine: converted in ") and lines[2] == "2 jobs: 0 skipped, 1 failed"
  assert (tmp_path / "b" / "0" / "commit_success.txt").exists()


def test_on_dataflow_each_job_is_submitted_and_the_next_follows(gcs_bucket, submitted, capsys):
  hf = f"gs://{gcs_bucket}/hf"
  upload_dir(goldens.path("qwen3", "hf"), hf)
  jobs = f"gs://{gcs_bucket}/jobs.yaml"
  storage.write_text(jobs, f"""
defaults: [{", ".join(DATAFLOW)}]
jobs:
  - {{name: scanned, direction: to_maxtext, source: "{hf}", destination: "gs://{gcs_bucket}/scan"}}
  - {{name: unscanned, direction: to_maxtext, source: "{hf}", destination: "gs://{gcs_bucket}/unscan",
      options: [scan_layers=false]}}
""")
  assert cli.run_main(batch.main, [jobs]) == 0
  out = capsys.readouterr().out.splitlines()
  assert [line for line in out if not line.startswith("to_maxtext: submitted job")] == [
      "scanned: submitted (no output yet)", "unscanned: submitted (no output yet)", "2 jobs: 0 skipped, 0 failed"]
  assert len(submitted) == 2
