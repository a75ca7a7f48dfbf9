"""In-process HF -> MaxText pipelines on the goldens, checked by restoring with Orbax itself."""
import json
import os

import ml_dtypes
import google_crc32c
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import to_maxtext_job
from transforms.errors import ConversionError
from tests import goldens
from transforms import dofns

IN_PROCESS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def convert(hf_dir, out, *flags, runner_flags=IN_PROCESS):
  args = [f"--hf_model_path={hf_dir}", f"--base_output_directory={out}", "--progress=false", *runner_flags,
          *flags]
  plan, items, totals = to_maxtext_job.convert(PipelineOptions(args), args)
  return plan, items, totals


@pytest.mark.parametrize("family", goldens.FAMILIES)
@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_bit_identical_to_maxtext(tmp_path, family, layout):
  _, items, _ = convert(goldens.path(family, "hf"), tmp_path, f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items(family, layout)))


def test_commit_files_and_metrics(tmp_path):
  plan, items, totals = convert(goldens.path("qwen3", "hf"), tmp_path, "--scan_layers=false")
  step = tmp_path / "0"
  with open(step / "_CHECKPOINT_METADATA") as f:
    assert json.load(f)["custom_metadata"] == {"scan_layers": False}
  assert (step / "commit_success.txt").exists() and (step / "items" / "commit_success.txt").exists()
  with open(step / "items" / "_METADATA") as f:
    meta = json.load(f)
  assert meta["use_ocdbt"] and meta["use_zarr3"] and meta["store_array_data_equal_to_fill_value"]
  assert len(meta["tree_metadata"]) == len(plan.arrays) + 1
  assert totals["tensors"] == len(plan.tasks)
  assert totals["read-bytes"] == plan.source_bytes


def test_float32_save_rounds_to_maxtexts_bf16(tmp_path):
  _, items, _ = convert(goldens.path("llama3.1", "hf"), tmp_path, "--save_dtype=float32")
  ours = goldens.restore(items)
  theirs = goldens.restore(goldens.items("llama3.1", "scan"))
  for k, v in theirs.items():
    if k == "step":
      continue
    assert ours[k].dtype == np.float32
    # The scaled query is kept in float32 here and rounds to exactly MaxText's bf16 value.
    assert goldens.same_bits(ours[k].astype(ml_dtypes.bfloat16), v), k
  query = "params/params/decoder/layers/self_attention/query/kernel"
  assert not np.array_equal(ours[query], ours[query].astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("ocdbt,zarr3", [(False, True), (False, False), (True, False)])
def test_other_storage_layouts(tmp_path, ocdbt, zarr3):
  _, items, _ = convert(goldens.path("llama3.1", "hf"), tmp_path, f"--checkpoint_storage_use_ocdbt={ocdbt}",
                        f"--checkpoint_storage_use_zarr3={zarr3}")
  names = os.listdir(items)
  assert ("manifest.ocdbt" in names) == ocdbt
  if not ocdbt:
    marker = "zarr.json" if zarr3 else ".zarray"
    assert os.path.exists(os.path.join(items, "params.params.decoder.layers.mlp.wo.kernel", marker))
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "scan")))


def test_one_and_two_worker_processes_give_the_same_checkpoint(tmp_path):
  results = {}
  for n in (1, 2):
    out = tmp_path / f"w{n}"
    _, items, totals = convert(goldens.path("qwen2.5", "hf"), out, runner_flags=(
        "--direct_running_mode=multi_processing", f"--direct_num_workers={n}"))
    writers = [d for d in os.listdir(items) if d.startswith("ocdbt.process_") and d != "ocdbt.process_meta"]
    assert len(writers) == n
    results[n] = goldens.restore(items)
  goldens.assert_same_checkpoint(results[1], results[2])
  goldens.assert_same_checkpoint(results[2], goldens.restore(goldens.items("qwen2.5", "scan")))


@pytest.mark.parametrize("level", [None, 3, 0])
def test_chunk_grid_and_codecs_on_disk(tmp_path, level):
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  flags = () if level is None else (f"--zstd_level={level}",)
  _, items, _ = convert(goldens.path("llama3.1", "hf"), tmp_path, *flags)
  kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{items}"}).result()
  meta = json.loads(kv.read("params.params.decoder.layers.mlp.wi_0.kernel/zarr.json").result().value)
  assert meta["shape"] == [64, 3, 96]
  assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 1, 96]
  codecs = meta["codecs"][0]["configuration"]["codecs"]
  if level == 0:
    assert [c["name"] for c in codecs] == ["bytes"]
  else:
    assert codecs[1] == {"name": "zstd", "configuration": {"level": level or 1, "checksum": False}}
  chunks = [k for k in kv.list().result() if k.startswith(b"params.params.decoder.layers.mlp.wi_0.kernel/c/")]
  assert len(chunks) == 16 * 3
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "scan")))


def test_existing_output_is_refused_unless_overwrite(tmp_path):
  hf = goldens.path("qwen3", "hf")
  convert(hf, tmp_path)
  with pytest.raises(ConversionError, match=r"0 already holds a checkpoint; pass --overwrite"):
    convert(hf, tmp_path)
  _, items, _ = convert(hf, tmp_path, "--overwrite", "--scan_layers=false")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "unscan")))


def die_reading(monkeypatch, tensor: str, reason: str, out) -> None:
  """Runs llama3.1 -> MaxText into `out` with the read of `tensor` failing, as a lost worker would."""
  real = dofns.read_tensor

  def failing(ref, rows=None):
    if ref.name == tensor:
      raise OSError(reason)
    return real(ref, rows)
  monkeypatch.setattr(dofns, "read_tensor", failing)
  with pytest.raises(Exception, match=reason):
    convert(goldens.path("llama3.1", "hf"), out)
  monkeypatch.setattr(dofns, "read_tensor", real)


def test_a_run_that_dies_leaves_no_commit_marker(tmp_path, monkeypatch):
  die_reading(monkeypatch, "model.layers.1.mlp.up_proj.weight", "disk went away", tmp_path)
  step = tmp_path / "0"
  assert not (step / "commit_success.txt").exists()
  assert not (step / "items" / "commit_success.txt").exists()
  assert not (step / "items" / "_METADATA").exists()
  with pytest.raises(ConversionError, match="incomplete checkpoint from an earlier run"):
    convert(goldens.path("llama3.1", "hf"), tmp_path)


def test_resume_after_a_failure_writes_only_what_is_missing(tmp_path, monkeypatch):
  die_reading(monkeypatch, "model.layers.2.mlp.up_proj.weight", "preempted", tmp_path)
  plan, items, totals = convert(goldens.path("llama3.1", "hf"), tmp_path, "--resume")
  assert 0 < totals["tensors"] < len(plan.tasks)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "scan")))
  with pytest.raises(ConversionError, match="already holds a checkpoint; pass --overwrite"):
    convert(goldens.path("llama3.1", "hf"), tmp_path, "--resume")


@pytest.mark.parametrize("ocdbt", [True, False])
def test_kill_9_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, ocdbt):
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from pipeline import demo  # pylint: disable=import-outside-toplevel
  hf = tmp_path / "hf"
  demo.make_model(str(hf), {**demo.DEMO_CONFIG, "num_hidden_layers": 48, "hidden_size": 512,
                            "intermediate_size": 1376})
  storage = [f"--checkpoint_storage_use_ocdbt={ocdbt}"]
  base = [sys.executable, "-m", "pipeline.to_maxtext", f"--hf_model_path={hf}", "--direct_num_workers=2", *storage]
  victim = subprocess.Popen([*base, f"base_output_directory={tmp_path / 'killed'}"], cwd=goldens.REPO,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
  for line in victim.stderr:  # the first progress line comes at about 10% done
    if line.startswith("to_maxtext: "):
      os.killpg(victim.pid, signal.SIGKILL)
      break
  victim.wait()
  assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not (tmp_path / "killed" / "0" / "commit_success.txt").exists()
  resumed = subprocess.run([*base, f"base_output_directory={tmp_path / 'killed'}", "--resume"], cwd=goldens.REPO,
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  stored = int(resumed.stderr.split(" slices already stored")[0].split("resuming ")[1].split(": ")[1].split(" of")[0])
  assert 0 < stored < 9 * 48 + 3
  _, clean, _ = convert(str(hf), tmp_path / "clean", *storage)  # uninterrupted, in this process
  goldens.assert_same_checkpoint(goldens.restore(str(tmp_path / "killed" / "0" / "items")), goldens.restore(clean))


def test_duplicated_elements_are_harmless(tmp_path):
  """Dataflow may run a bundle twice: the same slices land in two writers' sub-databases."""
  import models  # pylint: disable=import-outside-toplevel
  from pipeline.planner import plan_to_maxtext  # pylint: disable=import-outside-toplevel
  from transforms import orbax_writer  # pylint: disable=import-outside-toplevel
  from transforms.convert import hf_to_maxtext  # pylint: disable=import-outside-toplevel
  plan = plan_to_maxtext(goldens.path("qwen2.5", "hf"))
  family = models.BY_NAME[plan.family]
  target = orbax_writer.CheckpointTarget(str(tmp_path / "0"))
  orbax_writer.create_arrays(target, plan.arrays)
  first, retry = orbax_writer.SliceWriter(target, "first"), orbax_writer.SliceWriter(target, "retry")
  for n, task in enumerate(plan.tasks):
    value = hf_to_maxtext([dofns.read_tensor(r) for r in task.sources], family.param(task.param), plan.sizes)
    for writer in (first, retry) if n % 2 else (first,):
      writer.write(task.array, task.index, value)
  orbax_writer.commit(target, plan.arrays, ["first", "retry"], True, 0)
  goldens.assert_same_checkpoint(goldens.restore(target.items), goldens.restore(goldens.items("qwen2.5", "scan")))


def test_writers_databases_from_a_run_under_other_settings_are_resumed_and_merged(tmp_path, monkeypatch):
  """An earlier run (an older ckptflow) made its sub-databases under Orbax's settings: a resumed run
  reopens them with theirs, adds to them, and the merge gives MaxText's checkpoint."""
  import models  # pylint: disable=import-outside-toplevel
  from pipeline.planner import plan_to_maxtext  # pylint: disable=import-outside-toplevel
  from transforms import orbax_layout, orbax_writer  # pylint: disable=import-outside-toplevel
  from transforms.convert import hf_to_maxtext  # pylint: disable=import-outside-toplevel
  plan = plan_to_maxtext(goldens.path("qwen3", "hf"))
  family = models.BY_NAME[plan.family]
  target = orbax_writer.CheckpointTarget(str(tmp_path / "0"))
  values = [hf_to_maxtext([dofns.read_tensor(r) for r in t.sources], family.param(t.param), plan.sizes)
            for t in plan.tasks]
  half = len(plan.tasks) // 2
  with monkeypatch.context() as old:
    old.setattr(orbax_layout, "WRITER_OCDBT_CONFIG", orbax_layout.OCDBT_CONFIG)
    orbax_writer.create_arrays(target, plan.arrays)
    earlier = orbax_writer.SliceWriter(target, "earlier")
    for task, value in zip(plan.tasks[:half], values):
      earlier.write(task.array, task.index, value)
  orbax_writer.create_arrays(target, plan.arrays)
  again, later = orbax_writer.SliceWriter(target, "earlier"), orbax_writer.SliceWriter(target, "later")
  for n, (task, value) in enumerate(zip(plan.tasks[half:], values[half:])):
    (again if n % 2 else later).write(task.array, task.index, value)
  assert all(orbax_writer.finished(target, [(t.array, t.index, None) for t in plan.tasks]))
  orbax_writer.commit(target, plan.arrays, ["later"], True, 0)
  goldens.assert_same_checkpoint(goldens.restore(target.items), goldens.restore(goldens.items("qwen3", "scan")))


def test_a_writer_committing_write_by_write_does_not_rewrite_what_it_wrote_before(tmp_path):
  """400 writes of 16 small chunks each: under Orbax's one-leaf settings the writer's database grew to
  1.7 GB (every commit rewrote every earlier chunk); now it stays within a small multiple of the data."""
  from transforms import orbax_writer  # pylint: disable=import-outside-toplevel
  from transforms.orbax_layout import ArraySpec  # pylint: disable=import-outside-toplevel
  target = orbax_writer.CheckpointTarget(str(tmp_path / "0"))
  arrays = [ArraySpec(f"params/params/a{i}", (96, 64), "bfloat16", (6, 64)) for i in range(400)]
  orbax_writer.create_arrays(target, arrays)
  writer = orbax_writer.SliceWriter(target, "w")
  rng = np.random.default_rng(0)
  values = [rng.standard_normal((96, 64)).astype(ml_dtypes.bfloat16) for _ in arrays]
  for array, value in zip(arrays, values):
    writer.write(array, (), value)
  db = tmp_path / "0" / "items" / "ocdbt.process_w"
  stored = sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
  assert stored < 20 * sum(v.nbytes for v in values), stored
  orbax_writer.commit(target, arrays, ["w"], True, 0)
  restored = goldens.restore(target.items)
  assert all(goldens.same_bits(restored[f"params/params/a{i}"], v) for i, v in enumerate(values))


def test_manifest_records_what_the_checkpoint_was_made_from(tmp_path):
  import zlib  # pylint: disable=import-outside-toplevel
  from transforms.safetensors_io import list_checkpoint, read_tensor  # pylint: disable=import-outside-toplevel
  hf = goldens.path("qwen3", "hf")
  plan, items, _ = convert(hf, tmp_path, "--scan_layers=false")
  with open(tmp_path / "0" / "ckptflow_manifest.json") as f:
    manifest = json.load(f)
  assert manifest["tool"] == "ckptflow" and manifest["family"] == "qwen3" and manifest["direction"] == "to_maxtext"
  assert manifest["options"]["scan_layers"] is False and manifest["options"]["hf_model_path"] == hf
  shard = os.path.join(hf, "model.safetensors")
  config = os.path.join(hf, "config.json")
  assert manifest["sources"] == {path: {"size": os.path.getsize(path), "mtime_ns": os.stat(path).st_mtime_ns}
                                 for path in (shard, config)}
  refs = list_checkpoint(hf)
  assert sorted(manifest["tensors"]) == sorted(refs)
  for name, ref in refs.items():
    assert manifest["tensors"][name]["crc32c"] == google_crc32c.value(read_tensor(ref).tobytes()), name
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "unscan")))
