"""The command line as a user types it: MaxText's flags, --help, and one-line errors."""
import os
import subprocess
import sys

import pytest

from pipeline import cli
from transforms.errors import ConversionError
from tests import goldens


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "pipeline.to_maxtext", *args], cwd=goldens.REPO,
                        capture_output=True, text=True, timeout=300)


def test_maxtext_command_line_works_unchanged(tmp_path):
  hf = goldens.copy_hf("qwen3", str(tmp_path / "hf"))
  out = tmp_path / "out"
  p = run_cli("src/maxtext/configs/base.yml", "model_name=qwen3-0.6b", f"base_output_directory={out}",
              "scan_layers=True", "hardware=cpu", "skip_jax_distributed_system=True", "use_multimodal=false",
              "checkpoint_storage_use_zarr3=true", "checkpoint_storage_use_ocdbt=true",
              f"--hf_model_path={hf}", "--lazy_load_tensors=true", "--save_dtype=bfloat16")
  assert p.returncode == 0, p.stderr
  assert "note: ignored 'hardware=cpu'" in p.stderr
  assert "note: ignored 'src/maxtext/configs/base.yml'" in p.stderr
  assert "qwen3: 35 slices" in p.stderr
  assert p.stdout.strip() == f"wrote {out}/0/items (load_parameters_path={out}/0/items)"
  goldens.assert_same_checkpoint(goldens.restore(f"{out}/0/items"), goldens.restore(goldens.items("qwen3", "scan")))


def test_help_documents_everything():
  p = run_cli("--help")
  assert p.returncode == 0
  for word in ("--hf_model_path", "--save_dtype", "--checkpoint_storage_use_ocdbt", "--overwrite",
               "--lazy_load_tensors", "model_name=...", "scan_layers=...", "hardware=cpu", "--runner",
               "--direct_num_workers"):
    assert word in p.stdout, word


@pytest.mark.parametrize("case", ["truncated", "mismatch", "no_hf_path"])
def test_bad_input_is_one_line(tmp_path, case):
  hf = goldens.copy_hf("llama3.1", str(tmp_path / "hf"))
  args = [f"base_output_directory={tmp_path / 'out'}", f"--hf_model_path={hf}"]
  if case == "truncated":
    shard = os.path.join(hf, "model.safetensors")
    os.truncate(shard, os.path.getsize(shard) // 2)
    expect = f"error: {shard}: truncated: tensor "
  elif case == "mismatch":
    args.append("model_name=qwen3-4b")
    expect = "error: model_name=qwen3-4b is a qwen3 model but "
  else:
    args = args[:1]
    expect = "error: --hf_model_path is required"
  p = run_cli(*args)
  assert p.returncode == 2
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(expect), p.stderr
  assert not (tmp_path / "out").exists()


def test_translate_maps_maxtext_keys_and_notes_the_rest():
  flags, notes = cli.translate(["model_name=x", "scan_layers=false", "hardware=cpu", "--runner=R",
                                "base.yml"], ["model_name", "scan_layers"])
  assert flags == ["--model_name=x", "--scan_layers=false", "--runner=R"]
  assert len(notes) == 2
  with pytest.raises(ConversionError, match="unexpected argument 'oops'"):
    cli.translate(["oops"], [])


def test_worker_error_is_found_in_a_runner_failure():
  wrapped = RuntimeError("Traceback ...\ntransforms.errors.ConversionError: f.safetensors: truncated\n [while running]")
  assert cli.worker_error(wrapped) == "f.safetensors: truncated"
  assert cli.worker_error(RuntimeError("other")) is None


def test_progress_counts_slices_with_throughput_and_eta(capsys):
  from pipeline.runner import Progress  # pylint: disable=import-outside-toplevel
  with Progress(total=4, label="to_maxtext", enabled=True, total_bytes=4_000_000) as progress:
    for _ in range(4):
      with open(progress.path, "a") as f:
        f.write("1000000 ")
    assert progress._done() == (4, 4_000_000)  # pylint: disable=protected-access
    # 2 MB of 4 MB read in 1 s: 2 MB/s, and the other 2 MB take another second.
    assert progress.line(2, 1.0, 2_000_000) == ("to_maxtext: 2/4 slices [############............]  50% "
                                                 "2 MB/s ETA 1s, 1.0s")
    assert progress.line(0, 1.0, 0).endswith("ETA --, 1.0s")
  err = capsys.readouterr().err
  assert "to_maxtext: 4/4 slices [########################] 100%" in err
  assert not os.path.exists(progress.path)
  # Without the total bytes the ETA follows the count: 1 of 4 tensors in 90 s leaves 4m30s.
  hf = Progress(total=4, label="to_huggingface", enabled=False, unit="tensors")
  assert hf.line(1, 90.0, 10**9) == ("to_huggingface: 1/4 tensors [######..................]  25% 11.1 MB/s "
                                     "ETA 4m30s, 90.0s")


def test_summary_says_bytes_read_stored_and_wall_time_with_the_right_plural():
  from pipeline.runner import summary  # pylint: disable=import-outside-toplevel
  totals = {"tensors": 1, "read-bytes": 3_000_000, "write-bytes": 3_000_000}
  assert summary(totals, 2.0, 1_500_000) == "1 slice, 3 MB read, 1.5 MB stored on disk in 2.0s (1.5 MB/s)"
  assert summary({**totals, "tensors": 27}, 2.0, None, "tensor").startswith("27 tensors, 3 MB read, 3 MB written")


def test_to_huggingface_command_line(tmp_path):
  out = tmp_path / "hf"
  p = subprocess.run([sys.executable, "-m", "pipeline.to_huggingface", "model_name=llama3.1-8b",
                      f"load_parameters_path={goldens.items('llama3.1', 'scan')}", f"base_output_directory={out}",
                      "scan_layers=false", "weight_dtype=bfloat16", f"--hf_model_path={goldens.path('llama3.1', 'hf')}",
                      "hardware=cpu"], cwd=goldens.REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "holds scanned layers" in p.stderr
  # The note on hardware=cpu, the one on the tiny model's dimensions (not llama3.1-8b's), then the error.
  assert len(p.stderr.strip().splitlines()) == 3 and "override_model_config=true base_emb_dim=64" in p.stderr
  p = subprocess.run([sys.executable, "-m", "pipeline.to_huggingface", "model_name=llama3.1-8b",
                      f"load_parameters_path={goldens.items('llama3.1', 'scan')}", f"base_output_directory={out}",
                      "weight_dtype=bfloat16", f"--hf_model_path={goldens.path('llama3.1', 'hf')}"],
                     cwd=goldens.REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "llama3.1 (scanned): 30 tensors" in p.stderr
  assert sorted(os.listdir(out)) == ["ckptflow_manifest.json", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                     "tokenizer_config.json"]


def test_tensors_the_model_does_not_use_are_reported_in_one_line(tmp_path, capsys):
  from pipeline import to_maxtext_job  # pylint: disable=import-outside-toplevel
  from transforms.safetensors_io import read_header, read_tensor, write_safetensors  # pylint: disable=import-outside-toplevel
  hf = goldens.copy_hf("qwen3", str(tmp_path / "hf"))
  shard = os.path.join(hf, "model.safetensors")
  tensors = {n: read_tensor(r) for n, r in read_header(shard).items()}
  tensors["mtp.head.weight"] = tensors["model.norm.weight"]
  tensors["model.layers.0.self_attn.extra_bias"] = tensors["model.norm.weight"]
  write_safetensors(shard, tensors)
  assert to_maxtext_job.main([f"base_output_directory={tmp_path / 'out'}", f"--hf_model_path={hf}",
                          "--direct_running_mode=in_memory", "--progress=false"]) == 0
  ignored = [l for l in capsys.readouterr().err.splitlines() if l.startswith("ignored:")]
  assert ignored == ["ignored: 2 tensors a MaxText qwen3 model does not use: "
                     "model.layers.0.self_attn.extra_bias, mtp.head.weight"]
