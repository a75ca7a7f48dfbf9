"""MaxText checkpoints as a to_maxtext source: re-layout, parameter-only, dtype and storage changes.

Every result is restored with Orbax itself and compared with MaxText's own checkpoints, tree and bits.
"""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, to_maxtext_job
from tests import goldens
from tests.test_to_maxtext import IN_PROCESS
from tests.test_to_maxtext import convert as hf_to_maxtext
from transforms import checkpoint_tree
from transforms.errors import ConversionError
from transforms.orbax_reader import CheckpointReader

ALL_FAMILIES = sorted(f for f in os.listdir(goldens.GOLDENS) if os.path.isdir(goldens.path(f, "hf")))
TRAIN = os.path.join(goldens.GOLDENS_TRAIN, "llama3.1-train-scan-nnx")
TRAIN_STEP2 = os.path.join(TRAIN, "run", "llama3.1-scan-nnx", "checkpoints", "2", "items")
PARAM_ONLY = os.path.join(TRAIN, "param_only", "llama3.1-scan-nnx-param-only", "checkpoints", "0", "items")
LORA = os.path.join(goldens.GOLDENS_TRAIN, "lora-llama3.1")


def relayout(source, out, *flags, full_state=False, runner_flags=IN_PROCESS):
  key = "load_full_state_path" if full_state else "load_parameters_path"
  args = [f"--{key}={source}", f"--base_output_directory={out}", "--progress=false", *runner_flags, *flags]
  return to_maxtext_job.convert(PipelineOptions(args), args)


def config_flags(family):
  return [f"--hf_model_path={goldens.path(family, 'hf')}"] + (["--use_multimodal"] if family == "gemma3-mm" else [])


def copy_tree(source, dest):
  """A writable copy of a read-only golden directory."""
  shutil.copytree(source, dest)
  for root, dirs, files in os.walk(dest):
    for name in dirs + files:
      os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
  return str(dest)


# --- the tree layouts ---------------------------------------------------------------------------

def test_every_tree_layout_is_told_from_the_checkpoint_itself():
  linen = CheckpointReader(goldens.items("llama3.1", "scan")).tree
  assert (linen.layout, linen.nnx, linen.train_state, linen.scan_layers) == (checkpoint_tree.LINEN, False, False, True)
  assert linen.params["decoder/layers/mlp/wi_0/kernel"] == "params/params/decoder/layers/mlp/wi_0/kernel"
  assert linen.skipped == ("opt_state", "step")  # an empty opt_state placeholder, as MaxText's decode states have

  train = CheckpointReader(TRAIN_STEP2).tree
  assert train.nnx and train.train_state and train.scan_layers is True
  assert train.parameter_only_layout == checkpoint_tree.NNX_PARAMS
  assert len(train.params) == 12 and all(p.startswith("params/params/") for p in train.params.values())
  assert {s.split("/")[0] for s in train.skipped} == {"nnx_aux", "opt_state", "step"}

  param_only = CheckpointReader(PARAM_ONLY).tree
  assert param_only.layout == checkpoint_tree.NNX_PARAMS and param_only.nnx and not param_only.train_state
  assert param_only.scan_layers is False  # its _CHECKPOINT_METADATA says nothing: told from layers_0, ...
  assert param_only.params["decoder/layers_2/mlp/wo/kernel"] == "decoder/layers_2/mlp/wo/kernel/value"

  lora = CheckpointReader(os.path.join(LORA, "maxtext_adapter_scan", "llama3.1-8b", "hf_adapter", "0", "items")).tree
  assert lora.lora and not lora.params and lora.scan_layers is True
  with pytest.raises(ConversionError, match="holds a LoRA adapter"):
    lora.require_model("x")


@pytest.mark.parametrize("paths, scanned", [
    (["params/params/decoder/dense_layers/mlp/wo/kernel", "params/params/decoder/moe_layers/mlp/wo/kernel"], True),
    (["params/params/decoder/dense_layers_0/mlp/wo/kernel", "params/params/decoder/moe_layers_1/mlp/wo/kernel"], False),
    (["decoder/layers/layers_0/mlp/wo/kernel/value", "decoder/layers_remainder/layers_0/mlp/wo/kernel/value"], True),
    (["token_embedder/embedding/value"], None),
])
def test_scan_layers_from_the_tree_when_the_metadata_is_silent(paths, scanned):
  assert checkpoint_tree.detect(paths, {}).scan_layers is scanned
  assert checkpoint_tree.detect(paths, {"scan_layers": not scanned}).scan_layers is (not scanned)


# --- items 1: re-layout is exact for every golden family ------------------------------------------

@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("source,target", [("scan", "unscan"), ("unscan", "scan")])
def test_relayout_of_maxtexts_checkpoints_equals_maxtexts_other_layout(tmp_path, family, source, target):
  plan, items, totals = relayout(goldens.items(family, source), tmp_path, f"--scan_layers={target == 'scan'}",
                                 *config_flags(family))
  assert plan.scan_layers == (target == "scan") and not plan.unused
  assert totals["tensors"] == len(plan.tasks) and totals["read-bytes"] == plan.source_bytes
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items(family, target)))
