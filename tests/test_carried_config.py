"""MaxText -> HF of a checkpoint ckptflow wrote needs no --hf_model_path: its manifest carries the model."""
import json
import os
import shutil

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import to_maxtext_job

from tests import goldens
from tests.test_to_huggingface import to_hf
from tests.test_to_maxtext import IN_PROCESS
from tests.test_to_maxtext import convert as to_maxtext
from transforms import manifest
from transforms.errors import ConversionError


def same_files(a, b, except_names=(manifest.MANIFEST,)):
  """Both directories hold the same file names with the same bytes (our manifests differ by design)."""
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b))
  for name in names:
    if name not in except_names:
      with open(os.path.join(a, name), "rb") as f, open(os.path.join(b, name), "rb") as g:
        assert f.read() == g.read(), name
  return names


@pytest.mark.parametrize("family", ["qwen3", "llama3.1"])
@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_the_way_back_without_hf_model_path_equals_the_way_back_with_it(tmp_path, family, layout, capsys):
  source = goldens.copy_hf(family, tmp_path / "source")
  _, items, _ = to_maxtext(source, tmp_path / "mt", f"--scan_layers={layout == 'scan'}")
  with open(tmp_path / "mt" / "0" / manifest.MANIFEST) as f:
    recorded = json.load(f)
  with open(source / "config.json") as f:
    assert recorded["hf_files"]["config.json"] == f.read()
  assert recorded["tokenizer_from"] == str(source)
  to_hf(items, tmp_path / "with", hf_model_path=source)
  capsys.readouterr()
  to_hf(items, tmp_path / "without")
  err = capsys.readouterr().err
  recorded = tmp_path / "mt" / "0" / manifest.MANIFEST
  assert f"as recorded in {recorded}; tokenizer.json, tokenizer_config.json from {source}" in err
  names = same_files(tmp_path / "with", tmp_path / "without")
  for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
    assert name in names
  with open(source / "generation_config.json", "rb") as f, open(tmp_path / "without" / "generation_config.json",
                                                               "rb") as g:
    assert f.read() == g.read()


def test_the_model_travels_on_through_maxtext_to_maxtext_and_without_its_source(tmp_path, capsys):
  source = goldens.copy_hf("qwen3", tmp_path / "source")
  _, items, _ = to_maxtext(source, tmp_path / "mt", "--scan_layers=true")
  to_hf(items, tmp_path / "with", hf_model_path=source)
  # Re-laid out with no config given: the source checkpoint's manifest is the config, and it is passed on.
  args = [f"--load_parameters_path={items}", "--scan_layers=false", f"--base_output_directory={tmp_path / 'mt2'}",
          "--progress=false", *IN_PROCESS]
  _, unscanned, _ = to_maxtext_job.convert(PipelineOptions(args), args)
  shutil.rmtree(source)  # the model is gone: config.json and generation_config.json still come back
  capsys.readouterr()
  to_hf(unscanned, tmp_path / "without")
  err = capsys.readouterr().err
  assert "no tokenizer files copied" in err and "pass --hf_model_path" in err
  assert sorted(os.listdir(tmp_path / "without")) == ["ckptflow_manifest.json", "config.json",
                                                      "generation_config.json", "model.safetensors"]
  for name in ("config.json", "generation_config.json", "model.safetensors"):
    with open(tmp_path / "with" / name, "rb") as f, open(tmp_path / "without" / name, "rb") as g:
      assert f.read() == g.read(), name


def test_a_checkpoint_without_our_manifest_that_disagrees_with_the_built_in_config_asks_for_hf_model_path(
    tmp_path):
  with pytest.raises(ConversionError, match="built-in config of qwen3-0.6b.*pass --hf_model_path=DIR"):
    to_hf(goldens.items("qwen3", "scan"), tmp_path / "out", "--model_name=qwen3-0.6b")
