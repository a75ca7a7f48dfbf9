"""MaxText checkpoints as a to_maxtext source: re-layout, parameter-only, dtype and storage changes.

Every result is restored with Orbax itself and compared with MaxText's own checkpoints, tree and bits.
"""
import json
import os
import shutil

import ml_dtypes
import google_crc32c
import numpy as np
import pytest
import tensorstore as ts
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
  with pytest.raises(ConversionError, match="no MaxText model parameters"):
    checkpoint_tree.detect(["step", "foo/bar"]).require_model("x")


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


# --- item 2: a training state's parameters alone, as generate_param_only_checkpoint writes them -----

def training_goldens():
  """Every MaxText training run among the goldens with a generate_param_only_checkpoint output."""
  found = []
  for name in sorted(os.listdir(goldens.GOLDENS_TRAIN)) if os.path.isdir(goldens.GOLDENS_TRAIN) else ():
    meta_path = os.path.join(goldens.GOLDENS_TRAIN, name, "meta.json")
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        meta = json.load(f)
      if "param_only" in meta:
        found.append(pytest.param(name, meta, id=name))
  return found


@pytest.mark.parametrize("name,meta", training_goldens())
def test_maxtexts_param_only_command_line_gives_maxtexts_checkpoint(tmp_path, name, meta):
  """MaxText's generate_param_only_checkpoint command line, word for word (paths moved to the goldens,
  base_output_directory to a temporary directory), given to to_maxtext: the same tree and bits."""
  def local(path):
    return os.path.join(goldens.GOLDENS_TRAIN, path.split("/", 1)[1]) if path.startswith("train_goldens/") else path
  words = meta["param_only"]["cmd"].split(" -m ", 1)[1].split()[1:]
  argv = [f"{w.split('=', 1)[0]}={local(w.split('=', 1)[1])}" if "=" in w else w for w in words]
  run_name = next(w.split("=", 1)[1] for w in argv if w.startswith("run_name="))
  argv = [w for w in argv if not w.startswith("base_output_directory=")]
  argv += [f"base_output_directory={tmp_path / run_name / 'checkpoints'}", f"--hf_model_path={local(meta['hf_start'])}",
           "--progress=false", *IN_PROCESS]
  assert cli.run_main(to_maxtext_job.main, argv) == 0
  ours = str(tmp_path / run_name / "checkpoints" / "0" / "items")
  assert ours.endswith(meta["param_only"]["items"].split(run_name, 1)[1])
  goldens.assert_same_checkpoint(goldens.restore(ours), goldens.restore(local(meta["param_only"]["items"])))


def test_parameter_only_from_an_nnx_training_state_equals_maxtexts(tmp_path, monkeypatch):
  """MaxText's own command line (scan_layers=true force_unroll=true), and only parameter arrays are opened."""
  opened = []
  real_open = CheckpointReader._open  # pylint: disable=protected-access
  monkeypatch.setattr(CheckpointReader, "_open", lambda self, path: opened.append(path) or real_open(self, path))
  argv = ["model_name=llama3.1-8b", f"load_full_state_path={TRAIN_STEP2}", f"base_output_directory={tmp_path}",
          "scan_layers=true", "force_unroll=true", "hardware=cpu", "async_checkpointing=false",
          f"--hf_model_path={os.path.join(TRAIN, 'hf_start')}", "--progress=false", *IN_PROCESS]
  assert cli.run_main(to_maxtext_job.main, argv) == 0
  items = str(tmp_path / "0" / "items")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(PARAM_ONLY))
  assert opened and not [p for p in opened if p.startswith(("opt_state", "nnx_aux", "step"))]
  assert CheckpointReader(items).tree.layout == checkpoint_tree.NNX_PARAMS
  with open(tmp_path / "0" / "_CHECKPOINT_METADATA") as f:
    assert json.load(f)["custom_metadata"] == {"scan_layers": False}


def pathways_copy(items, dest, leave_out=()):
  """A copy of a checkpoint in Pathways storage (one zarr3 directory per array, no OCDBT) without the
  arrays under `leave_out`: their bytes do not exist, though _METADATA still lists them."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  reader = CheckpointReader(items)
  out_items = os.path.join(dest, "items")
  for path in reader.paths:
    if path.split("/")[0] in leave_out or path in ("opt_state", "opt_state/1"):
      continue
    source = reader.array(path)
    key = os.path.join(out_items, path.replace("/", "."))
    target = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": key}, "create": True,
                      "metadata": source.spec().to_json()["metadata"]}).result()
    target.write(source.read().result()).result()
  for name in ("_METADATA", "commit_success.txt"):
    shutil.copy(os.path.join(items, name), os.path.join(out_items, name))
  for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
    shutil.copy(os.path.join(os.path.dirname(items), name), os.path.join(dest, name))
  return out_items


def test_the_optimizer_state_is_never_read(tmp_path):
  """Its bytes are gone from the source, and the parameter-only checkpoint comes out exactly the same."""
  source = pathways_copy(TRAIN_STEP2, str(tmp_path / "run" / "2"), leave_out=("opt_state", "nnx_aux"))
  assert not [n for n in os.listdir(source) if n.startswith(("opt_state", "nnx_aux"))]
  assert CheckpointReader(source).tree.train_state  # _METADATA still lists them
  _, items, _ = relayout(source, tmp_path / "out", "--force_unroll", "--model_name=llama3.1-8b",
                         f"--hf_model_path={os.path.join(TRAIN, 'hf_start')}", full_state=True)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(PARAM_ONLY))


def training_state(family, step_dir, kind):
  """A TrainState as MaxText's training saves it, made with Orbax from MaxText's scanned golden:
  float32 parameters (each within a quarter bf16 step of the golden's value, so generate_param_only's
  cast gives the golden back), Adam's count, mu and nu, and a step. `kind` "nnx" adds NNX's rng state
  under nnx_aux, "nnx-value" also wraps every parameter as .../value."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  model, zeros = {}, {}
  for path, value in goldens.restore(goldens.items(family, "scan")).items():
    if path == "step":
      continue
    wide = value.astype(np.float32)
    if value.dtype == ml_dtypes.bfloat16:
      wide = (wide * (1 + rng.uniform(-2**-11, 2**-11, wide.shape))).astype(np.float32)
    keys = path.split("/")[2:] + (["value"] if kind == "nnx-value" else [])
    for tree, leaf in ((model, wide), (zeros, np.zeros_like(wide))):
      node = tree
      for k in keys[:-1]:
        node = node.setdefault(k, {})
      node[keys[-1]] = leaf
  adam = {"count": np.int32(3), "mu": {"params": zeros}, "nu": {"params": zeros}}
  state = {"params": {"params": model}, "step": np.int32(3), "opt_state": [adam, {"count": np.int32(3)}]}
  if kind.startswith("nnx"):
    rngs = {"params": {"count": np.uint32(3), "key": np.zeros(4, np.uint32)}}
    state["nnx_aux"] = {"model": {"decoder": {"rngs": rngs}}}
  items = os.path.join(step_dir, "items")
  ocp.PyTreeCheckpointer().save(items, state)
  return items


@pytest.mark.parametrize("family,kind", [("deepseek3", "linen"), ("qwen3-moe", "nnx"), ("gemma3", "nnx-value"),
                                         ("mixtral", "linen")])
def test_parameter_only_from_linen_and_nnx_training_states(tmp_path, family, kind):
  """Dense and MoE, Linen and NNX: MaxText's rules are every parameter cast to bfloat16 (also Gemma3's
  float32 norms), layers unrolled with force_unroll, a Linen tree (params/params + step) from Linen and
  an NNX parameter-only tree (.../value, no step) from NNX."""
  source = training_state(family, str(tmp_path / "run" / "3"), kind)
  plan, items, _ = relayout(source, tmp_path / "out", "--force_unroll", *config_flags(family), full_state=True)
  golden = goldens.restore(goldens.items(family, "unscan"))
  expected = {k: v.astype(ml_dtypes.bfloat16) if k != "step" else v for k, v in golden.items()}
  if kind.startswith("nnx"):
    expected = {k[len("params/params/"):] + "/value": v for k, v in expected.items() if k != "step"}
  goldens.assert_same_checkpoint(goldens.restore(items), expected)
  assert plan.save_dtype == "bfloat16" and not plan.scan_layers


def test_the_config_is_all_a_maxtext_source_needs_of_hf(tmp_path):
  """--hf_model_path may hold config.json alone: no weights are read (there are none)."""
  config_only = tmp_path / "config"
  config_only.mkdir()
  shutil.copy(goldens.path("deepseek3", "hf", "config.json"), config_only / "config.json")
  plan, items, _ = relayout(goldens.items("deepseek3", "unscan"), tmp_path / "out", "--scan_layers=true",
                            f"--hf_model_path={config_only}")
  assert all(s.items == goldens.items("deepseek3", "unscan") for t in plan.tasks for s in t.sources)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("deepseek3", "scan")))


# --- dtype and storage changes; chunks copied as stored ---------------------------------------------

def test_dtype_change_both_ways_is_exact(tmp_path):
  golden = goldens.restore(goldens.items("gemma3", "scan"))
  plan, wide, _ = relayout(goldens.items("gemma3", "scan"), tmp_path / "f32", "--save_dtype=float32",
                           *config_flags("gemma3"))
  ours = goldens.restore(wide)
  assert plan.save_dtype == "float32" and all(v.dtype == np.float32 for k, v in ours.items() if k != "step")
  goldens.assert_same_checkpoint({k: v.astype(golden[k].dtype) for k, v in ours.items()}, golden)
  # Back, without --save_dtype: each array keeps the float32 it now has; reshard_checkpoint's weight_dtype= casts.
  _, kept, _ = relayout(wide, tmp_path / "kept", *config_flags("gemma3"))
  goldens.assert_same_checkpoint(goldens.restore(kept), ours)
  _, narrow, _ = relayout(wide, tmp_path / "bf16", "--weight_dtype=bfloat16", *config_flags("gemma3"))
  expected = {k: v.astype(ml_dtypes.bfloat16) if k != "step" else v for k, v in golden.items()}
  goldens.assert_same_checkpoint(goldens.restore(narrow), expected)


@pytest.mark.parametrize("ocdbt,zarr3", [(False, True), (False, False), (True, False)])
def test_mcjax_to_pathways_and_back(tmp_path, ocdbt, zarr3):
  _, items, _ = relayout(goldens.items("qwen3-moe", "unscan"), tmp_path / "there", *config_flags("qwen3-moe"),
                         f"--checkpoint_storage_use_ocdbt={ocdbt}", f"--checkpoint_storage_use_zarr3={zarr3}")
  names = os.listdir(items)
  assert ("manifest.ocdbt" in names) == ocdbt
  if not ocdbt:
    marker = "zarr.json" if zarr3 else ".zarray"
    assert os.path.exists(os.path.join(items, "params.params.decoder.layers_0.moe_block.wi_0", marker))
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3-moe", "unscan")))
  _, back, _ = relayout(items, tmp_path / "back", *config_flags("qwen3-moe"), "--scan_layers=true")
  assert "manifest.ocdbt" in os.listdir(back)
  goldens.assert_same_checkpoint(goldens.restore(back), goldens.restore(goldens.items("qwen3-moe", "scan")))


@pytest.mark.parametrize("family", ["llama3.1", "deepseek3", "gemma3"])
def test_a_relayout_of_our_own_checkpoint_copies_every_chunk_as_stored(tmp_path, family):
  """Our checkpoints chunk each layer on its own: scan <-> unscan, and McJAX -> Pathways, decode nothing."""
  _, scanned, _ = hf_to_maxtext(goldens.path(family, "hf"), tmp_path / "scan", "--scan_layers=true")
  plan, unscanned, totals = relayout(scanned, tmp_path / "unscan", "--scan_layers=false", *config_flags(family))
  assert totals["slices-copied-as-stored"] == len(plan.tasks)
  goldens.assert_same_checkpoint(goldens.restore(unscanned), goldens.restore(goldens.items(family, "unscan")))
  plan, pathways, totals = relayout(unscanned, tmp_path / "pathways", "--scan_layers=true",
                                    "--checkpoint_storage_use_ocdbt=false", *config_flags(family))
  assert totals["slices-copied-as-stored"] == len(plan.tasks)
  goldens.assert_same_checkpoint(goldens.restore(pathways), goldens.restore(goldens.items(family, "scan")))
  with open(tmp_path / "pathways" / "0" / "ckptflow_manifest.json") as f:
    crcs = json.load(f)["tensors"]
  assert all(set(c) == {"crc32c_stored"} for c in crcs.values())
  # Another zstd level, dtype or chunk grid goes through the values.
  _, other, totals = relayout(pathways, tmp_path / "level3", "--zstd_level=3", *config_flags(family))
  assert totals.get("slices-copied-as-stored", 0) == 0
  goldens.assert_same_checkpoint(goldens.restore(other), goldens.restore(goldens.items(family, "scan")))


def test_zarr2_chunks_are_copied_as_stored_too(tmp_path):
  zarr2 = ("--checkpoint_storage_use_ocdbt=false", "--checkpoint_storage_use_zarr3=false")
  _, source, _ = hf_to_maxtext(goldens.path("llama3.1", "hf"), tmp_path / "scan", "--scan_layers=true", *zarr2)
  plan, items, totals = relayout(source, tmp_path / "unscan", "--scan_layers=false", *zarr2, *config_flags("llama3.1"))
  assert totals["slices-copied-as-stored"] == len(plan.tasks)
  assert os.path.exists(os.path.join(items, "params.params.decoder.layers_2.mlp.wo.kernel", "0.0"))
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "unscan")))


@pytest.mark.parametrize("ocdbt", [True, False])
def test_a_chunk_missing_from_a_copied_slice_is_one_line(tmp_path, capsys, ocdbt):
  """Chunks copied as stored are read from the source's files, not through tensorstore: a chunk the
  database (or the directory) lacks is still named, and nothing is committed."""
  storage_flags = ("--checkpoint_storage_use_ocdbt=false",) if not ocdbt else ()
  _, source, _ = hf_to_maxtext(goldens.path("llama3.1", "hf"), tmp_path / "scan", "--scan_layers=true", *storage_flags)
  key = "params.params.decoder.layers.mlp.wo.kernel/c/0/1/0"
  if ocdbt:
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{source}"}).result()
    assert kv.read(key).result().state == "value"
    kv.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()
  else:
    os.remove(os.path.join(source, key))
  out = tmp_path / "unscan"
  code, lines = run_cli([f"load_parameters_path={source}", f"base_output_directory={out}", "scan_layers=false",
                         *storage_flags, *config_flags("llama3.1")], capsys)
  assert code == 2 and len(lines) == 1, lines
  assert lines[0] == (f"error: {source}: cannot read params/params/decoder/layers/mlp/wo/kernel [(1, 1)]: a chunk is "
                      "missing; the checkpoint is incomplete or damaged")
  assert not os.path.exists(out / "0" / "items" / "commit_success.txt")


def test_copied_and_converted_slices_share_one_writer(tmp_path):
  """MaxText's own checkpoint at its own zstd level and chunking: arrays without layers are copied as
  stored, layered ones (whose chunks hold every layer) are read and cut, in the same sub-database."""
  plan, items, totals = relayout(goldens.items("qwen3", "scan"), tmp_path, "--scan_layers=false", "--zstd_level=3",
                                 "--simulated_cpu_devices_count=1", *config_flags("qwen3"))
  assert 0 < totals["slices-copied-as-stored"] < len(plan.tasks)
  writers = [d for d in os.listdir(items) if d.startswith("ocdbt.process_") and d != "ocdbt.process_meta"]
  assert len(writers) == 1
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "unscan")))


# --- item 4: refusals, each one line -------------------------------------------------------------

def run_cli(argv, capsys):
  code = cli.run_main(to_maxtext_job.main, [*argv, "--progress=false", *IN_PROCESS])
  err = capsys.readouterr().err.strip().splitlines()
  return code, [line for line in err if not line.startswith("note: ")]


def test_a_checkpoint_is_never_converted_into_itself_or_inside_itself(tmp_path, capsys):
  ckpt = copy_tree(goldens.path("llama3.1", "maxtext_scan"), tmp_path / "ckpt")
  items = os.path.join(ckpt, "0", "items")
  before = sorted(os.listdir(items))
  for out in (ckpt, os.path.join(ckpt, "."), items, os.path.join(items, "sub"), os.path.join(ckpt, "0")):
    code, lines = run_cli([f"load_parameters_path={items}", f"base_output_directory={out}", "scan_layers=false",
                           "--overwrite", *config_flags("llama3.1")], capsys)
    assert code == 2 and len(lines) == 1 and "the checkpoint being read" in lines[0], lines
  assert sorted(os.listdir(items)) == before and os.path.exists(os.path.join(ckpt, "0", "commit_success.txt"))
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "scan")))


def test_trees_that_are_not_this_maxtext_model_are_refused_in_one_line(tmp_path, capsys):
  incomplete = copy_tree(goldens.path("llama3.1", "maxtext_scan"), tmp_path / "incomplete")
  for marker in ("0/commit_success.txt", "0/items/commit_success.txt"):
    os.remove(os.path.join(incomplete, marker))
  adapter = os.path.join(LORA, "maxtext_adapter_scan", "llama3.1-8b", "hf_adapter", "0", "items")
  cases = [
      ([f"load_parameters_path={goldens.items('llama3.1', 'scan')}", "model_name=qwen3-4b"],
       "array params/params/token_embedder/embedding has shape [512, 64] but the built-in config of qwen3-4b"),
      ([f"load_parameters_path={goldens.items('llama3.1', 'scan')}", "model_name=qwen3-4b",
        f"--hf_model_path={goldens.path('llama3.1', 'hf')}"], "model_name=qwen3-4b is a qwen3 model but"),
      ([f"load_parameters_path={goldens.items('qwen3', 'scan')}", f"--hf_model_path={goldens.path('qwen2.5', 'hf')}"],
       "array params/params/decoder/layers/self_attention/query/kernel has shape [64, 3, 4, 32] but"),
      ([f"load_parameters_path={goldens.items('qwen3', 'scan')}", f"--hf_model_path={goldens.path('llama3.1', 'hf')}"],
       "no array params/params/decoder/logits_dense/kernel, which a llama3.1 model with this config has"),
      ([f"load_parameters_path={adapter}", "model_name=llama3.1-8b"], "holds a LoRA adapter"),
      ([f"load_parameters_path={incomplete}/0/items", *config_flags("llama3.1")], "no commit_success.txt"),
      ([f"load_full_state_path={goldens.items('llama3.1', 'scan')}", *config_flags("llama3.1")],
       "holds no optimizer state"),
      ([f"load_parameters_path={PARAM_ONLY}", f"load_full_state_path={TRAIN_STEP2}", "model_name=llama3.1-8b"],
       "not both"),
      ([f"load_parameters_path={goldens.items('llama3.1', 'scan')}", "weight_dtype=float16",
        *config_flags("llama3.1")], "weight_dtype=float16"),
  ]
  for argv, message in cases:
    out = tmp_path / "out"
    code, lines = run_cli([*argv, f"base_output_directory={out}"], capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], (message, lines)
    assert not out.exists()


# --- to_huggingface reads every tree layout too ---------------------------------------------------

def test_to_huggingface_reads_an_nnx_parameter_only_checkpoint(tmp_path):
  from tests.test_to_huggingface import tensors, to_hf  # pylint: disable=import-outside-toplevel
  plan, _ = to_hf(PARAM_ONLY, tmp_path, "--model_name=llama3.1-8b", hf_model_path=os.path.join(TRAIN, "hf_start"))
  assert plan.scan_layers is False
  ours, theirs = tensors(tmp_path), tensors(os.path.join(TRAIN, "hf_from_param_only"))
  assert sorted(ours) == sorted(theirs)
  assert all(goldens.same_bits(ours[k], theirs[k]) for k in theirs)


def test_to_huggingface_refuses_a_lora_adapter_in_one_line(tmp_path):
  from tests.test_to_huggingface import to_hf  # pylint: disable=import-outside-toplevel
  adapter = os.path.join(LORA, "maxtext_adapter_unscan", "llama3.1-8b", "hf_adapter", "0", "items")
  with pytest.raises(ConversionError, match="holds a LoRA adapter"):
    to_hf(adapter, tmp_path, hf_model_path=goldens.path("llama3.1", "hf"))


# --- the rest of to_maxtext works as for HF sources: manifest, resume, verify, plan, dry run ---------

def test_manifest_records_the_maxtext_source(tmp_path):
  source = goldens.items("mixtral", "scan")
  plan, _, _ = relayout(source, tmp_path, "--scan_layers=false", *config_flags("mixtral"))
  with open(tmp_path / "0" / "ckptflow_manifest.json") as f:
    manifest = json.load(f)
  assert manifest["direction"] == "to_maxtext" and manifest["source"] == source
  assert manifest["options"]["load_parameters_path"] == source and manifest["options"]["scan_layers"] is False
  assert set(manifest["sources"]) == {os.path.join(source, n) for n in ("_METADATA", "commit_success.txt",
                                                                          "manifest.ocdbt")} | {
      os.path.join(os.path.dirname(source), n) for n in ("_CHECKPOINT_METADATA", "commit_success.txt")} | {
      goldens.path("mixtral", "hf", "config.json")}
  import zlib  # pylint: disable=import-outside-toplevel
  reader = CheckpointReader(source)
  for task in plan.tasks[:20]:
    (ref,) = task.sources
    assert manifest["tensors"][ref.name]["crc32c"] == google_crc32c.value(np.ascontiguousarray(ref.read()).tobytes())
  assert any("[" in name for name in manifest["tensors"]) and reader.tree.scan_layers


def test_resume_of_an_interrupted_relayout_writes_only_what_is_missing(tmp_path, monkeypatch):
  real = CheckpointReader.result

  def failing(reader, future, path, fixed=()):
    if path.endswith("layers/mlp/wo/kernel"):
      raise OSError("preempted")
    return real(reader, future, path, fixed)
  monkeypatch.setattr(CheckpointReader, "result", failing)
  with pytest.raises(Exception, match="preempted"):
    relayout(goldens.items("llama3.1", "scan"), tmp_path, "--scan_layers=false", *config_flags("llama3.1"))
  monkeypatch.setattr(CheckpointReader, "result", real)
  assert not (tmp_path / "0" / "commit_success.txt").exists()
  plan, items, totals = relayout(goldens.items("llama3.1", "scan"), tmp_path, "--scan_layers=false", "--resume",
                                 *config_flags("llama3.1"))
  assert 0 < totals["tensors"] < len(plan.tasks)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "unscan")))


def test_verify_rechecks_against_the_maxtext_source(tmp_path, capsys):
  from pipeline import verify  # pylint: disable=import-outside-toplevel
  _, items, _ = relayout(TRAIN_STEP2, tmp_path / "po", "--force_unroll", "--model_name=llama3.1-8b",
                         f"--hf_model_path={os.path.join(TRAIN, 'hf_start')}", full_state=True)
  # The source and config come from the checkpoint's manifest ...
  assert verify.main([f"load_parameters_path={items}", *IN_PROCESS, "--progress=false"]) == 0
  assert capsys.readouterr().out.splitlines()[-1].endswith(" 30 bit-identical")
  # ... or are given: MaxText's own parameter-only checkpoint passes against the training state it came from.
  assert verify.main([f"load_parameters_path={PARAM_ONLY}", f"load_full_state_path={TRAIN_STEP2}",
                      "model_name=llama3.1-8b", f"--hf_model_path={os.path.join(TRAIN, 'hf_start')}",
                      *IN_PROCESS, "--progress=false"]) == 0
  assert capsys.readouterr().out.splitlines()[-1].endswith(" 30 bit-identical")


def test_plan_and_dry_run_from_metadata_alone(tmp_path, capsys):
  from pipeline import plan  # pylint: disable=import-outside-toplevel
  args = [f"load_full_state_path={TRAIN_STEP2}", "model_name=llama3.1-8b", "force_unroll=true",
          f"--hf_model_path={os.path.join(TRAIN, 'hf_start')}", f"base_output_directory={tmp_path / 'out'}"]
  assert plan.main(args) == 0
  report = capsys.readouterr().out
  # 30 slices; the 3 layers of each of the 9 layered arrays share their stored chunks: 12 elements.
  assert report.startswith("to_maxtext llama3.1: pre-flight plan") and "elements           12" in report
  assert "tensors            30" in report and "read               780 KB" in report
  assert plan.main(["to_maxtext", f"load_parameters_path={PARAM_ONLY}", *args[1:]]) == 0
  assert "elements           30" in capsys.readouterr().out
  assert cli.run_main(to_maxtext_job.main, [*args, "--dry_run"]) == 0
  assert "pre-flight plan" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_gcs_source_and_destination_with_two_worker_processes(tmp_path, gcs_bucket):
  from tests.gcs_emulator import upload_dir  # pylint: disable=import-outside-toplevel
  _, ours, _ = hf_to_maxtext(goldens.path("qwen3", "hf"), tmp_path / "ours", "--scan_layers=true")
  for name, local in (("ours", str(tmp_path / "ours")), ("maxtext", goldens.path("qwen3", "maxtext_scan")),
                      ("config", goldens.path("qwen3", "hf"))):
    upload_dir(local, f"gs://{gcs_bucket}/{name}")
  multi = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
  for name, copied in (("ours", True), ("maxtext", False)):
    out = f"gs://{gcs_bucket}/{name}-unscan"
    plan, items, totals = relayout(f"gs://{gcs_bucket}/{name}/0/items", out, "--scan_layers=false",
                                   f"--hf_model_path=gs://{gcs_bucket}/config", runner_flags=multi)
    assert (totals.get("slices-copied-as-stored", 0) == len(plan.tasks)) == copied
    assert items == f"{out}/0/items" and totals["tensors"] == len(plan.tasks)
    goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "unscan")))


def rechunked_copy(items, dest, halve_first_axis=True):
  """A copy of a MaxText checkpoint (Pathways storage) with every array chunked in two along its first
  axis and whole along the others, layers included: as MaxText saves from 2 devices."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  reader = CheckpointReader(items)
  out_items = os.path.join(dest, "items")
  for path in reader.paths:
    if path == "opt_state":
      continue
    source = reader.array(path)
    metadata = source.spec().to_json()["metadata"]
    chunks = list(source.shape)
    if halve_first_axis and chunks and chunks[0] % 2 == 0:
      chunks[0] //= 2
    metadata["chunk_grid"]["configuration"]["chunk_shape"] = chunks
    metadata["codecs"][0]["configuration"]["chunk_shape"] = chunks
    target = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(out_items, path.replace(
        "/", "."))}, "create": True, "metadata": metadata}).result()
    target.write(source.read().result()).result()
  for name in ("_METADATA", "commit_success.txt"):
    shutil.copy(os.path.join(items, name), os.path.join(out_items, name))
  for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
    shutil.copy(os.path.join(os.path.dirname(items), name), os.path.join(dest, name))
  return out_items


def test_layers_that_share_stored_chunks_are_read_once(tmp_path, monkeypatch):
  """MaxText's scanned chunks hold every layer: a layer is never read alone (that would decode each chunk
  once per layer); the layers of a chunk are read together, block by block along the chunk grid."""
  source = rechunked_copy(goldens.items("llama3.1", "scan"), str(tmp_path / "src" / "0"))
  reads = []
  real = CheckpointReader.result
  monkeypatch.setattr(CheckpointReader, "result",
                      lambda r, f, path, fixed=(): reads.append(path) or real(r, f, path, fixed))
  plan, items, totals = relayout(source, tmp_path / "out", "--scan_layers=false", "--max_element_size=8KB",
                                 *config_flags("llama3.1"))
  wi_0 = "params/params/decoder/layers/mlp/wi_0/kernel"
  assert [len(e) for e in plan.elements if e[0].sources[0].array == wi_0] == [3, 3]  # 2 blocks x 3 layers
  assert reads.count(wi_0) == 2 and len(plan.elements) < len(plan.tasks) == totals["tensors"]
  assert {t.array.chunks for t in plan.tasks if t.sources[0].array == wi_0} == {(32, 96)}
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "unscan")))


def test_the_command_line_runs_local_workers_as_threads(tmp_path):
  """MaxText's words as they are; without --direct_running_mode the local runner uses threads of one
  process for a MaxText source (tensorstore does the work): one OCDBT writer per thread, exact result."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  _, ours, _ = hf_to_maxtext(goldens.path("qwen2.5", "hf"), tmp_path / "ours", "--scan_layers=false")
  run = subprocess.run([sys.executable, "-m", "pipeline.to_maxtext", "model_name=qwen2.5-7b",
                        f"load_parameters_path={ours}", f"base_output_directory={tmp_path / 'out'}", "scan_layers=true",
                        "hardware=cpu", f"--hf_model_path={goldens.path('qwen2.5', 'hf')}", "--direct_num_workers=2"],
                       cwd=goldens.REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  items = str(tmp_path / "out" / "0" / "items")
  assert run.stdout.strip().endswith(f"(load_parameters_path={items})")
  writers = [d for d in os.listdir(items) if d.startswith("ocdbt.process_") and d != "ocdbt.process_meta"]
  assert 1 <= len(writers) <= 2
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen2.5", "scan")))


def test_dataflow_job_from_a_maxtext_checkpoint_commits_inside_the_graph(gcs_bucket, monkeypatch, capsys):
  """Submit-and-return on Dataflow (Beam's own dry run builds the job), then the graph alone, run
  from its proto on the local runner, re-lays out and commits; local paths are refused first."""
  from tests.gcs_emulator import upload_dir  # pylint: disable=import-outside-toplevel
  from tests.test_dataflow import DATAFLOW, run_locally, top_level  # pylint: disable=import-outside-toplevel
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from transforms import storage, writer_lock  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(to_maxtext_job, "is_dry_run", lambda options: False)  # --dry_run=True is Beam's here
  line = run_cli_on_dataflow([*DATAFLOW, f"load_full_state_path={TRAIN_STEP2}", "base_output_directory=gs://b/o",
                              "model_name=llama3.1-8b"], capsys)
  assert line == (f"error: --load_full_state_path={TRAIN_STEP2}: Dataflow workers cannot see this machine's disk; "
                  "use a gs:// path")
  upload_dir(goldens.path("llama3.1", "maxtext_scan"), f"gs://{gcs_bucket}/ckpt")
  upload_dir(goldens.path("llama3.1", "hf"), f"gs://{gcs_bucket}/config")
  protos, run = [], beam.Pipeline.run
  monkeypatch.setattr(beam.Pipeline, "run", lambda p, *a, **k: protos.append(p.to_runner_api()) or run(p, *a, **k))
  out = f"gs://{gcs_bucket}/unscan"
  assert cli.run_main(to_maxtext_job.main, [*DATAFLOW, f"load_parameters_path=gs://{gcs_bucket}/ckpt/0/items",
                                            f"base_output_directory={out}", "scan_layers=false",
                                            f"--hf_model_path=gs://{gcs_bucket}/config"]) == 0
  # Submitted, nothing written yet but the writer lock, which the job's commit step releases.
  assert f"the job writes {out}/0/items" in capsys.readouterr().out and storage.find(out) == [writer_lock.LOCK_NAME]
  assert top_level(protos[-1]) == ["Seed", "CreateArrays", "Plan", "Distribute", "WriteSlices", "AllWrites", "Barrier",
                                   "Commit"]
  run_locally(protos[-1])
  goldens.assert_same_checkpoint(goldens.restore(f"{out}/0/items"), goldens.restore(goldens.items("llama3.1", "unscan")))
  assert writer_lock.LOCK_NAME not in storage.list_names(out)


def run_cli_on_dataflow(argv, capsys):
  assert cli.run_main(to_maxtext_job.main, argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  return err[0]
