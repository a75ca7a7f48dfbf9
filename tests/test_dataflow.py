"""--runner=DataflowRunner without a cloud: one-line checks, submit-and-return, and the submitted graph.

Either Beam's own --dry_run=True (DataflowRunner builds the whole job request, then does not send
it) or a recorder in place of Pipeline.run that hands back a job id. The graph is then run on the
local runner from its runner-API proto alone, so the merge and commit must happen inside it, with
no driver after the job.
"""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline import cli, runner, to_huggingface_job, to_maxtext_job
from tests import goldens
from tests.gcs_emulator import upload_dir
from tests.test_to_huggingface import assert_same_model, tensors
from tests.test_to_maxtext import IN_PROCESS
from transforms import storage, writer_lock

JOB_ID = "2026-01-02_03_04_05-1234567890"
DATAFLOW = ("--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
            "--temp_location=gs://my-bucket/tmp", "--sdk_container_image=europe-docker.pkg.dev/p/r/ckptflow:1",
            # Beam's own: DataflowRunner builds the job but does not send it, and Pipeline() skips
            # its online look at the temp bucket (which waits ~25 s for credentials offline).
            "--dry_run=True")


@pytest.fixture(autouse=True)
def beams_dry_run_builds_the_job(monkeypatch):
  """ckptflow's CLIs read a bare --dry_run as "print the pre-flight plan and stop"; here Beam's
  meaning is wanted (build the Dataflow job, do not send it), so the CLIs go on to convert."""
  for module in (to_maxtext_job, to_huggingface_job):
    monkeypatch.setattr(module, "is_dry_run", lambda options: False)


class SubmittedJob:
  """What the driver sees of a job DataflowRunner has submitted."""

  def job_id(self):
    return JOB_ID

  def wait_until_finish(self, duration=None):
    raise AssertionError("the driver waited for a Dataflow job")


@pytest.fixture
def submitted(monkeypatch):
  pipelines = []

  def record(pipeline, *args, **kwargs):
    pipelines.append(pipeline)
    return SubmittedJob()
  monkeypatch.setattr(beam.Pipeline, "run", record)
  return pipelines


@pytest.fixture
def dry_runs(monkeypatch):
  """(pipeline proto as built, result) of each Pipeline.run, which runs for real."""
  runs, run = [], beam.Pipeline.run

  def spy(pipeline, *args, **kwargs):
    proto = pipeline.to_runner_api()
    runs.append((proto, run(pipeline, *args, **kwargs)))
    return runs[-1][1]
  monkeypatch.setattr(beam.Pipeline, "run", spy)
  return runs


def producers(proto):
  """pcollection id -> ids of the transforms (composite and leaf) that output it."""
  made = {}
  for tid, t in proto.components.transforms.items():
    for pc in t.outputs.values():
      made.setdefault(pc, set()).add(tid)
  return made


def upstream(proto, name):
  """Names of the top-level transforms the named one depends on through its inputs."""
  transforms = proto.components.transforms
  made = producers(proto)
  (start,) = [tid for tid, t in transforms.items() if t.unique_name == name]
  seen, todo = set(), [start]
  while todo:
    for pc in transforms[todo.pop()].inputs.values():
      for tid in made.get(pc, ()):
        if tid not in seen:
          seen.add(tid)
          todo.append(tid)
  return {transforms[t].unique_name for t in seen} & set(top_level(proto))


def top_level(proto):
  root = proto.components.transforms[proto.root_transform_ids[0]]
  return [proto.components.transforms[t].unique_name for t in root.subtransforms]


def run_locally(proto):
  """Runs a pipeline from its runner-API proto alone, on the in-process local runner."""
  local = beam.Pipeline.from_runner_api(proto, FnApiRunner(), PipelineOptions(list(IN_PROCESS)))
  # Pipeline.run is the recorder here: run on the runner itself.
  FnApiRunner().run_pipeline(local, PipelineOptions(list(IN_PROCESS))).wait_until_finish()


def test_to_maxtext_submits_and_returns_and_its_graph_commits_after_every_write(gcs_bucket, dry_runs, capsys):
  hf = f"gs://{gcs_bucket}/hf"
  upload_dir(goldens.path("llama3.1", "hf"), hf)
  out = f"gs://{gcs_bucket}/out"
  assert cli.run_main(to_maxtext_job.main, [*DATAFLOW, f"--hf_model_path={hf}",
                                        f"base_output_directory={out}", "scan_layers=true"]) == 0
  printed = capsys.readouterr().out
  assert "to_maxtext: submitted job (no id)" in printed and f"the job writes {out}/0/items" in printed
  # The driver read headers and fingerprints, and wrote nothing at the output but the lock the job holds.
  assert storage.find(out) == [writer_lock.LOCK_NAME]
  assert writer_lock.read(writer_lock.lock_path(out))[0].remote == "DataflowRunner"

  # DataflowRunner made the job request (a batch job, on our image) and only did not send it.
  proto, result = dry_runs[-1]  # Pipeline.run also runs a copy of itself, rebuilt from its proto
  assert result.job.proto.type_.name == "JOB_TYPE_BATCH"
  assert "europe-docker.pkg.dev/p/r/ckptflow:1" in str(result.job.proto_pipeline.components.environments)
  assert top_level(proto) == ["Seed", "CreateArrays", "Plan", "Distribute", "WriteSlices", "AllWrites", "Barrier",
                              "Commit"]
  writes = {"WriteSlices", "CreateArrays", "AllWrites", "Distribute", "Plan", "Seed"}
  assert upstream(proto, "Commit") == writes | {"Barrier"} and writes <= upstream(proto, "Barrier")
  assert not storage.exists(f"{out}/0/commit_success.txt")

  # The graph alone (no driver after it) writes, merges and commits the checkpoint.
  run_locally(proto)
  assert storage.exists(f"{out}/0/commit_success.txt") and storage.exists(f"{out}/0/ckptflow_manifest.json")
  assert writer_lock.read(writer_lock.lock_path(out)) is None  # released by the commit step
  goldens.assert_same_checkpoint(goldens.restore(f"{out}/0/items"), goldens.restore(goldens.items("llama3.1", "scan")))


def test_to_huggingface_submits_and_returns_and_finalizes_after_every_shard(tmp_path, gcs_bucket, submitted, capsys):
  ckpt = f"gs://{gcs_bucket}/ckpt"
  upload_dir(goldens.path("qwen3", "maxtext_unscan"), ckpt)
  config = f"gs://{gcs_bucket}/config"
  upload_dir(goldens.path("qwen3", "hf"), config)
  out = f"gs://{gcs_bucket}/hf-out"
  assert cli.run_main(to_huggingface_job.main, [*DATAFLOW, f"load_parameters_path={ckpt}/0/items",
                                            f"base_output_directory={out}", f"--hf_model_path={config}",
                                            "--max_shard_size=100KB"]) == 0
  printed = capsys.readouterr().out
  assert f"submitted job {JOB_ID}" in printed and "then the index and config.json" in printed
  assert storage.find(out) == [writer_lock.LOCK_NAME]

  assert f"to_huggingface: submitted job {JOB_ID}: https://console.cloud.google.com/dataflow/jobs/europe-west4/" \
         f"{JOB_ID}?project=my-project" in printed
  (pipeline,) = submitted
  proto = pipeline.to_runner_api()
  assert top_level(proto) == ["PlanShards", "DistributeShards", "WriteShards", "ShardBarrier", "Finalize"]
  assert upstream(proto, "Finalize") == {"PlanShards", "DistributeShards", "WriteShards", "ShardBarrier"}
  assert "WriteShards" in upstream(proto, "ShardBarrier")

  run_locally(proto)
  assert len([n for n in storage.list_names(out) if n.endswith(".safetensors")]) > 1
  assert writer_lock.LOCK_NAME not in storage.list_names(out)  # released once config.json was written
  local = tmp_path / "hf"
  for name in storage.list_names(out):
    storage.write_bytes(str(local / name), storage.read_bytes(f"{out}/{name}"))
  assert_same_model(tensors(local), tensors(goldens.path("qwen3", "hf")), "qwen3")


def one_line_error(capsys, main, argv):
  assert cli.run_main(main, argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_dataflow_without_project_or_temp_location_fails_in_one_line_before_any_work(submitted, capsys):
  # The source does not exist: the runner options are checked before it is even looked at.
  base = ["--hf_model_path=gs://no-such-bucket/hf", "base_output_directory=gs://no-such-bucket/out"]
  line = one_line_error(capsys, to_maxtext_job.main, ["--runner=DataflowRunner", "--region=us-central1", *base])
  assert line == ("error: --runner=DataflowRunner needs --project --temp_location (e.g. --project=my-project "
                  "--region=us-central1 --temp_location=gs://my-bucket/tmp)")
  line = one_line_error(capsys, to_maxtext_job.main, [*DATAFLOW[:3], "--temp_location=/tmp/x", *DATAFLOW[4:], *base])
  assert line == "error: --temp_location=/tmp/x: Dataflow needs a gs:// location"
  line = one_line_error(capsys, to_maxtext_job.main, [*DATAFLOW[:4], *base])
  assert "--sdk_container_image=<the flex template image>" in line and "--setup_file=./setup.py" in line
  assert not submitted


@pytest.mark.parametrize("main, argv, named", [
    # Local directories that exist (one that does not is "no such directory" before any runner check).
    (to_maxtext_job.main, ["--hf_model_path=/tmp", "base_output_directory=gs://b/out"],
     "--hf_model_path=/tmp"),
    (to_maxtext_job.main, ["--hf_model_path=gs://b/hf", "base_output_directory=/tmp/out"],
     "--base_output_directory=/tmp/out"),
    (to_huggingface_job.main, ["load_parameters_path=/ckpt/0/items", "base_output_directory=gs://b/o"],
     "--load_parameters_path=/ckpt/0/items"),
    (to_huggingface_job.main, ["load_parameters_path=gs://b/0/items", "base_output_directory=gs://b/o",
                           "--hf_model_path=."], "--hf_model_path=."),
])
def test_dataflow_refuses_paths_on_the_drivers_disk(submitted, capsys, main, argv, named):
  line = one_line_error(capsys, main, [*DATAFLOW, *argv])
  assert line == f"error: {named}: Dataflow workers cannot see this machine's disk; use a gs:// path"
  assert not submitted


def test_dataflow_accepts_hub_outputs_which_the_workers_upload(submitted, capsys, gcs_bucket):
  """hf:// outputs are uploaded shard by shard by the workers, so the driver-disk check lets them
  through; this run stops at the next check instead (no checkpoint there to carry a config)."""
  items = f"gs://{gcs_bucket}/0/items"
  line = one_line_error(capsys, to_huggingface_job.main, [*DATAFLOW, f"load_parameters_path={items}",
                                                       "base_output_directory=hf://me/model"])
  assert line.startswith(f"error: load_parameters_path={items}: not a MaxText checkpoint"), line
  assert not submitted


def test_only_dataflow_without_wait_returns_before_the_job_ends():
  assert not runner.waits(PipelineOptions(list(DATAFLOW)))
  assert runner.waits(PipelineOptions([*DATAFLOW, "--wait"]))
  assert runner.waits(PipelineOptions([*DATAFLOW, "--wait=true"]))
  assert runner.waits(PipelineOptions(list(IN_PROCESS)))
  assert runner.waits(PipelineOptions([]))
