"""Qwen3-Omni's thinker against MaxText's goldens: text + audio tower (MaxText's model always has
it) and with the vision tower; the way back, which MaxText lacks; scan refused."""
import json

import numpy as np
import pytest

from pipeline.planner import detect_family, family_of_model_name, plan_to_maxtext, read_config
from tests import qwen_checks as qc
from transforms.errors import ConversionError

CASES = qc.cases("qwen3-omni")


@pytest.mark.parametrize("golden,layout", CASES)
def test_planned_tree_equals_maxtext_tree(golden, layout):
  qc.planned_tree_is_maxtexts(golden, layout, "qwen3-omni")


@pytest.mark.parametrize("golden,layout", CASES)
def test_bit_identical_to_maxtext(tmp_path, golden, layout):
  qc.bit_identical_to_maxtext(tmp_path, golden, layout)


@pytest.mark.parametrize("golden,layout", CASES)
def test_maxtext_checkpoints_give_back_the_original_model(tmp_path, golden, layout):
  qc.gives_back_the_original(tmp_path, golden, layout)


def test_scan_is_refused_in_one_line_writing_nothing(tmp_path):
  qc.scan_is_refused(tmp_path, "qwen3-omni-mm")


def test_text_only_conversion_of_the_multimodal_checkpoint(tmp_path):
  qc.text_only_from_the_multimodal_checkpoint(tmp_path, "qwen3-omni")


def test_float32_round_trip_is_exact(tmp_path):
  qc.float32_round_trip_is_exact(tmp_path, "qwen3-omni-mm", "unscan")


def test_talker_and_code2wav_are_ignored_not_fatal(tmp_path):
  """A full Omni release also holds the speech-output talker and code2wav, which MaxText has no place for."""
  src = qc.copy_hf("qwen3-omni", tmp_path / "hf")
  extra = {"talker.model.layers.0.mlp.gate.weight": np.ones((4, 8), np.float32),
           "code2wav.decoder.0.conv.weight": np.ones((2, 3), np.float32)}
  weights = {n: v.astype(np.float32) for n, v in qc.tensors(src).items()}
  qc.safetensors.numpy.save_file({**weights, **extra}, f"{src}/model.safetensors", metadata={"format": "pt"})
  plan = plan_to_maxtext(src, scan_layers=False, use_multimodal=True)
  assert not set(extra) & {s.name for t in plan.tasks for s in t.sources} and not set(extra) & set(plan.unused)


def test_model_names():
  assert family_of_model_name("qwen3-omni-30b-a3b").name == "qwen3-omni"
  assert detect_family(read_config(qc.path("qwen3-omni", "hf")), "qwen3-omni-30b-a3b").name == "qwen3-omni"


def test_audio_config_that_disagrees_with_the_tensors_is_named(tmp_path):
  src = qc.copy_hf("qwen3-omni", tmp_path / "hf")
  config = read_config(src)
  config["thinker_config"]["audio_config"]["num_mel_bins"] = 80  # conv_out's input width follows from it
  with open(f"{src}/config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ConversionError, match=r"tensor thinker.audio_tower.conv_out.weight has shape \[48, 384\] but "
                                           r"config.json implies \[48, 240\]"):
    plan_to_maxtext(src, scan_layers=False)
