"""gs:// in and out through the fake GCS server, on the local runner's worker threads and processes."""
import pytest

from tests import goldens
from tests.gcs_emulator import download_dir, upload_dir
from tests.test_to_maxtext import convert
from transforms import storage

MULTI_PROCESS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
THREADS = ("--direct_running_mode=multi_threading", "--direct_num_workers=2")  # the local runner's default


@pytest.mark.parametrize("ocdbt", [True, False])
def test_gcs_source_and_destination(tmp_path, gcs_bucket, ocdbt):
  hf = f"gs://{gcs_bucket}/models/qwen3"
  upload_dir(goldens.path("qwen3", "hf"), hf)
  out = f"gs://{gcs_bucket}/ckpt"
  plan, items, totals = convert(hf, out, "--scan_layers=true", f"--checkpoint_storage_use_ocdbt={ocdbt}",
                                runner_flags=MULTI_PROCESS)
  assert items == f"{out}/0/items"
  assert all(s.file.startswith("gs://") for t in plan.tasks for s in t.sources)
  assert totals["read-bytes"] == plan.source_bytes
  assert storage.exists(f"{out}/0/commit_success.txt")
  # Orbax restores straight from the bucket...
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "scan")))
  # ...and from a plain copy of the objects: the checkpoint is self-contained.
  download_dir(out, str(tmp_path / "copy"))
  goldens.assert_same_checkpoint(goldens.restore(str(tmp_path / "copy" / "0" / "items")),
                                 goldens.restore(goldens.items("qwen3", "scan")))


def test_worker_reads_only_its_tensor_bytes(gcs_server, gcs_bucket):
  hf = f"gs://{gcs_bucket}/models/llama"
  upload_dir(goldens.path("llama3.1", "hf"), hf)
  from pipeline.planner import plan_to_maxtext  # pylint: disable=import-outside-toplevel
  from transforms.safetensors_io import read_tensor  # pylint: disable=import-outside-toplevel
  task = plan_to_maxtext(hf).tasks[5]
  (ref,) = task.sources
  # The server logs after it answers: let the plan's header reads drain before counting.
  storage.write_text(f"gs://{gcs_bucket}/settled", "x")
  settle = gcs_server.log.mark()
  assert storage.read_bytes(f"gs://{gcs_bucket}/settled") == b"x"
  gcs_server.log.since(settle, until="settled?alt=media")
  mark = gcs_server.log.mark()
  value = read_tensor(ref)
  lines = gcs_server.log.since(mark, until="206")
  gets = [l for l in lines if '"GET ' in l and "model.safetensors" in l]
  assert len(gets) == 1 and " 206 " in gets[0], lines
  assert value.nbytes == ref.nbytes < storage.size(ref.file) / 10


def test_gcs_maxtext_to_hf(tmp_path, gcs_bucket):
  """On worker threads, the default: the bucket's client is shared by both workers of the process."""
  from tests.test_to_huggingface import assert_same_model, tensors, to_hf  # pylint: disable=import-outside-toplevel
  ckpt = f"gs://{gcs_bucket}/ckpt"
  upload_dir(goldens.path("llama3.1", "maxtext_unscan"), ckpt)
  hf = f"gs://{gcs_bucket}/hf-config"
  upload_dir(goldens.path("llama3.1", "hf"), hf)
  out = f"gs://{gcs_bucket}/hf-out"
  plan, totals = to_hf(f"{ckpt}/0/items", out, "--max_shard_size=150KB", hf_model_path=hf,
                       runner_flags=THREADS)
  assert len(plan.shards) > 1 and totals["tensors"] == plan.tensor_count
  assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(storage.list_names(out))
  download_dir(out, str(tmp_path / "hf"))
  assert_same_model(tensors(tmp_path / "hf"), tensors(goldens.path("llama3.1", "hf")), "llama3.1")


def test_resume_on_gcs_keeps_what_the_bucket_holds(gcs_bucket, monkeypatch):
  """The record of finished work is the stored chunks themselves: on gs:// a resumed run lists the
  writers' OCDBT trees in the bucket and writes only the rest (what a Dataflow re-run does)."""
  from tests.test_to_maxtext import die_reading  # pylint: disable=import-outside-toplevel
  out = f"gs://{gcs_bucket}/preempted"
  die_reading(monkeypatch, "model.layers.2.mlp.up_proj.weight", "preempted", out)
  assert not storage.exists(f"{out}/0/commit_success.txt")
  plan, items, totals = convert(goldens.path("llama3.1", "hf"), out, "--resume")
  assert 0 < totals["tensors"] < len(plan.tasks)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("llama3.1", "scan")))
