"""The README's first command, at a smaller size: it must convert and verify end to end."""
import json

from pipeline import demo
from tests import goldens


def test_demo_converts_and_verifies(tmp_path, capsys):
  assert demo.main(["--workdir", str(tmp_path), "--layers", "2"]) == 0
  out = capsys.readouterr().out
  for scan in ("True", "False"):
    assert f"scan_layers={scan}: Orbax restores {tmp_path}/maxtext_{'scan' if scan == 'True' else 'unscan'}/0/items; " \
           "21 slices bit-exact" in out
  assert out.count("tensors bit-identical to the original, 2 within one bf16 rounding") == 2
  assert "back to HF (no --hf_model_path): 19 tensors bit-identical" in out
  assert out.count("with no missing or unexpected keys; logits within") == 2
  restored = goldens.restore(str(tmp_path / "maxtext_scan" / "0" / "items"))
  assert restored["params/params/decoder/layers/mlp/wi_0/kernel"].shape == (256, 2, 688)
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f)["num_hidden_layers"] == 2


def test_verify_catches_a_wrong_array(tmp_path):
  demo.make_model(str(tmp_path / "hf"), {**demo.DEMO_CONFIG, "num_hidden_layers": 1})
  other = tmp_path / "other"
  demo.make_model(str(other), {**demo.DEMO_CONFIG, "num_hidden_layers": 1}, seed=1)
  demo.to_maxtext_job.main([f"base_output_directory={tmp_path / 'ckpt'}", f"--hf_model_path={other}",
                        "--direct_running_mode=in_memory", "--progress=false"])
  try:
    demo.verify(str(tmp_path / "hf"), str(tmp_path / "ckpt" / "0" / "items"), True)
  except SystemExit as e:
    assert "MISMATCH" in str(e)
  else:
    raise AssertionError("verify accepted a checkpoint made from other weights")


def test_the_logit_check_catches_other_weights(tmp_path):
  config = {**demo.DEMO_CONFIG, "num_hidden_layers": 1}
  demo.make_model(str(tmp_path / "a"), config)
  demo.make_model(str(tmp_path / "b"), config, seed=1)
  assert demo.compare_logits(str(tmp_path / "a"), str(tmp_path / "a"), config["vocab_size"]) == 0.0
  assert demo.compare_logits(str(tmp_path / "a"), str(tmp_path / "b"), config["vocab_size"]) > demo.LOGIT_TOLERANCE
