"""What a run does to its destination: one writer at a time, room checked before the first byte, a
full disk, a failing worker and an interrupt said in one line, and nothing left behind but one
checkpoint's data.

Full disks are real: a small tmpfs mounted for the test (skipped where mounting is not allowed), filled
by the test once the conversion has passed its pre-flight. Interrupts are real signals to real CLI
processes running the local runner, its workers threads (the default) or processes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import batch, cli, destination, outputs, to_huggingface_job, to_maxtext_job
from pipeline.options import ConversionOptions
from tests import goldens, sized_model
from tests.test_hub import TOKEN, server  # pylint: disable=unused-import (the Hub stand-in fixture)
from transforms import disk_full, leftovers, orbax_writer, stopping, writer_lock
from transforms.orbax_writer import CheckpointTarget
from transforms.errors import ConversionError

IN_PROCESS = ("--direct_running_mode=in_memory", "--direct_num_workers=1", "--progress=false")
LOCAL_WORKERS = ("--direct_num_workers=2",)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A 50 MB llama3.1-shaped model: its conversion lasts long enough to be interrupted midway."""
  return sized_model.write_llama(str(tmp_path_factory.mktemp("sized") / "hf"), hidden=512, layers=6, vocab=8192,
                                 shards=2)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
  """The same model converted without incident (unscanned), in-process: what every test must end with."""
  out = str(tmp_path_factory.mktemp("reference") / "mt")
  to_maxtext(model, out, "--scan_layers=false")
  hf = str(tmp_path_factory.mktemp("reference") / "hf")
  to_hf(f"{out}/0/items", hf, model)
  return out, hf


def to_maxtext(hf, out, *flags):
  args = [f"--hf_model_path={hf}", f"--base_output_directory={out}", *IN_PROCESS, *flags]
  return to_maxtext_job.convert(PipelineOptions(args), args)


def to_hf(items, out, hf, *flags):
  args = [f"--load_parameters_path={items}", f"--base_output_directory={out}", f"--hf_model_path={hf}",
          "--max_shard_size=10MB", *IN_PROCESS, *flags]
  return to_huggingface_job.convert(PipelineOptions(args), args)


def cli_args(direction, source, out, *flags, scan_layers=False):
  if direction == "to_maxtext":
    return ["-m", "pipeline.to_maxtext", f"base_output_directory={out}", f"--hf_model_path={source[0]}",
            f"scan_layers={str(scan_layers).lower()}", *LOCAL_WORKERS, *flags]
  return ["-m", "pipeline.to_huggingface", f"load_parameters_path={source[0]}", f"base_output_directory={out}",
          f"--hf_model_path={source[1]}", "--max_shard_size=10MB", *LOCAL_WORKERS, *flags]


def start(args, **kwargs):
  """A CLI in its own process group, as a shell starts a foreground job."""
  return subprocess.Popen([sys.executable, *args], cwd=goldens.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True, **kwargs)


def run(args, timeout=600):
  return subprocess.run([sys.executable, *args], cwd=goldens.REPO, capture_output=True, text=True, timeout=timeout)


def wait_for(condition, process=None, timeout=300):
  deadline = time.monotonic() + timeout
  while not condition():
    if process is not None and process.poll() is not None:
      raise AssertionError(f"exited {process.returncode} first: {process.communicate()[1][-3000:]}")
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.005)


def slices_stored(out):
  """A writer has committed its first slice."""
  items = os.path.join(out, "0", "items")
  return os.path.isdir(items) and any(re.fullmatch(r"ocdbt\.process_[0-9a-f]{16}", n) and
                                      os.path.exists(os.path.join(items, n, "manifest.ocdbt"))
                                      for n in os.listdir(items))


def whole_slice_stored(out, model):
  """At least one slice of the plan is wholly stored (what an interrupt keeps)."""
  conv = PipelineOptions([f"--hf_model_path={model}", "--scan_layers=false"]).view_as(ConversionOptions)
  slices = [(t.array, t.index, t.window) for t in to_maxtext_job.plan_from_options(conv).tasks]
  target = CheckpointTarget(os.path.join(out, "0"))

  def stored():
    try:
      return slices_stored(out) and any(orbax_writer.finished(target, slices))
    except ValueError:  # a writer's database appearing while it is read
      return False
  return stored


def shard_stored(out):
  return os.path.isdir(out) and any(n.endswith(".safetensors") for n in os.listdir(out))


def leftover_files(root):
  """Every temporary file of ours (any writer's, tensorstore's included) and any lock under `root`."""
  return [os.path.join(r, n) for r, _, names in os.walk(root) for n in names
          if leftovers.is_temporary(n, tensorstore=True) or n == writer_lock.LOCK_NAME]


def one_line(stderr, prefix):
  """The last stderr line starts with `prefix`, and nothing but progress and notes came before it."""
  lines = stderr.strip().splitlines()
  assert lines and lines[-1].startswith(prefix), stderr[-3000:]
  noise = [l for l in lines[:-1] if not re.match(r"(to_maxtext|to_huggingface): \d+/\d+ |note: |resuming ", l)]
  assert not noise, stderr[-3000:]
  return lines[-1]


def assert_same_maxtext(items, reference_out):
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(f"{reference_out}/0/items"))


def assert_same_hf(out, reference_hf):
  names = sorted(n for n in os.listdir(reference_hf) if n != "ckptflow_manifest.json")
  assert sorted(n for n in os.listdir(out) if n != "ckptflow_manifest.json") == names
  for name in names:
    with open(os.path.join(out, name), "rb") as a, open(os.path.join(reference_hf, name), "rb") as b:
      assert a.read() == b.read(), name


# ---- small disks -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
  """mount(bytes) -> a fresh tmpfs of that size; unmounted after the test."""
  mounted = []

  def mount(size):
    where = tmp_path / f"disk{len(mounted)}"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "ckptflow-test", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
      pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:100]}); the full-disk tests need root")
    mounted.append(where)
    return str(where)
  yield mount
  for where in mounted:
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk):
  """Takes every free byte of `disk`, as another process on a shared disk would."""
  with open(os.path.join(disk, "filler"), "wb") as f:
    block = b"\0" * 2**20
    try:
      while True:
        f.write(block)
        f.flush()
    except OSError:
      pass


def run_filling(args, disk, started):
  """Runs the CLI; once `started()` (it is past its pre-flight), fills the disk under it."""
  process = start(args)
  filled = threading.Event()

  def filler():
    while process.poll() is None and not started():
      time.sleep(0.002)
    if process.poll() is None:
      fill(disk)
      filled.set()
  thread = threading.Thread(target=filler, daemon=True)
  thread.start()
  _, err = process.communicate(timeout=600)
  thread.join()
  assert filled.is_set(), f"the run ended before the disk was filled: {err[-2000:]}"
  return process.returncode, err


def test_too_small_a_destination_is_refused_before_the_first_byte(model, reference, small_disk):
  disk = small_disk(8 * 2**20)
  out = os.path.join(disk, "out")
  done = run(cli_args("to_maxtext", (model,), out))
  assert done.returncode == 2
  line = one_line(done.stderr, "error: ")
  assert re.fullmatch(rf"error: {re.escape(out)} has 8\.\d+ MB free; this conversion writes \d+(\.\d+)? MB "
                      r"\(use another base_output_directory\)", line), line
  assert os.listdir(disk) == []
  done = run(cli_args("to_huggingface", (f"{reference[0]}/0/items", model), out))
  assert done.returncode == 2
  assert re.fullmatch(rf"error: {re.escape(out)} has 8\.\d+ MB free; this conversion writes 5\d\.\d MB "
                      r"\(use another base_output_directory\)", one_line(done.stderr, "error: "))
  assert os.listdir(disk) == []


def test_a_disk_that_fills_during_the_run_gets_back_every_byte(model, small_disk):
  disk = small_disk(90 * 2**20)
  out = os.path.join(disk, "out")
  rc, err = run_filling(cli_args("to_maxtext", (model,), out), disk, lambda: slices_stored(out))
  assert rc == 2
  line = one_line(err, "error: ")
  assert re.fullmatch(rf"error: {re.escape(out)}/0/items: out of space writing .+ \(.*No space left on device.*\); "
                      r"removed everything this run wrote: free space, then run it again", line), line
  assert os.listdir(disk) == ["filler"]


def test_with_resume_a_full_disk_keeps_what_was_stored_and_finishes_later(model, reference, small_disk):
  disk = small_disk(90 * 2**20)
  out = os.path.join(disk, "out")
  rc, err = run_filling(cli_args("to_maxtext", (model,), out, "--resume"), disk, lambda: slices_stored(out))
  assert rc == 2
  line = one_line(err, "error: ")
  found = re.fullmatch(rf"error: {re.escape(out)}/0/items: out of space writing .+; kept the (\d+) of (\d+) slices "
                       r"stored so far: free space, then rerun with --resume", line)
  assert found, line
  assert not leftover_files(disk)
  os.remove(os.path.join(disk, "filler"))
  done = run(cli_args("to_maxtext", (model,), out, "--resume"))
  assert done.returncode == 0, done.stderr
  assert_same_maxtext(f"{out}/0/items", reference[0])
  assert sorted(os.listdir(disk)) == ["out"] and os.listdir(out) == ["0"] and not leftover_files(disk)


def test_to_huggingface_on_a_disk_that_fills_removes_its_shards(model, reference, small_disk):
  disk = small_disk(80 * 2**20)
  out = os.path.join(disk, "hf")
  rc, err = run_filling(cli_args("to_huggingface", (f"{reference[0]}/0/items", model), out), disk,
                        lambda: shard_stored(out))
  assert rc == 2
  line = one_line(err, "error: ")
  assert re.fullmatch(rf"error: {re.escape(out)}: out of space writing "
                      r"(shard model-\d+-of-\d+\.safetensors|the index.*) \(No space left on device\); "
                      r"removed everything this run wrote: free space, then run it again", line), line
  assert os.listdir(disk) == ["filler"]


def test_space_needs_add_up_per_file_system_and_count_what_overwrite_frees(tmp_path):
  free = {"value": 10 * 10**6}
  needs = [destination.Need(str(tmp_path / "out"), 6 * 10**6, "use another base_output_directory"),
           destination.Need(str(tmp_path / "cache"), 5 * 10**6, "use another --hf_cache_dir")]
  with pytest.raises(ConversionError, match=rf"^{re.escape(str(tmp_path / 'out'))} has 10 MB free; this conversion "
                                            r"writes 11 MB \(use another base_output_directory\)$"):
    destination.check_space(needs, free=lambda path: free["value"])
  destination.check_space([*needs[:1], destination.Need(str(tmp_path / "cache"), 5 * 10**6, "", reclaimed=10**6)],
                          free=lambda path: free["value"])
  destination.check_space([destination.Need("gs://b/out", 10**15, "")], free=lambda path: 0)


def test_hub_destinations_need_local_scratch_for_each_local_worker(tmp_path):
  shards = [type("Shard", (), {"size": size, "tensors": ()})() for size in (5, 9, 7)]
  needs = outputs.hf_needs("hf://user/repo", shards, 0, 0, scratch_writers=2)
  assert needs[1].directory and needs[1].nbytes == 9 + 7 + outputs.HF_METADATA_BYTES
  assert len(outputs.hf_needs(str(tmp_path), shards, 0, 0, scratch_writers=2)) == 1
  with pytest.raises(ConversionError, match=rf"^worker {re.escape(socket.gethostname())}: {re.escape(str(tmp_path))} "
                                            r"has [\d,]+ MB free; shard x needs [\d,]+ MB there \(give the workers"):
    disk_full.check_scratch(str(tmp_path), 10**18, "shard x")


# ---- one writer per output -----------------------------------------------------------------------


def test_a_second_run_stops_at_once_and_says_who_holds_the_destination(model, tmp_path):
  out = str(tmp_path / "out")
  first = start(cli_args("to_maxtext", (model,), out, scan_layers=True))
  wait_for(lambda: os.path.exists(os.path.join(out, writer_lock.LOCK_NAME)), first)
  os.kill(first.pid, signal.SIGSTOP)  # the holder stays alive, but does not finish while the others try
  try:
    others = [start(cli_args("to_maxtext", (model,), out, *extra)) for extra in ((), ("--resume",), ("--overwrite",))]
    stderrs = [p.communicate(timeout=300)[1] for p in others]
  finally:
    os.kill(first.pid, signal.SIGCONT)
  for second, stderr in zip(others, stderrs):
    assert second.returncode == 2
    line = one_line(stderr, "error: ")
    assert re.fullmatch(rf"error: {re.escape(out)} is being written by another conversion \(to_maxtext, pid "
                        rf"{first.pid} on this host, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\), "
                        rf"hf_model_path={re.escape(model)} save_dtype=bfloat16 scan_layers=True\); wait for it to "
                        r"finish, or use another base_output_directory", line), line
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err
  # One checkpoint (the scanned one) and nothing else: no lock, no other run's writers.
  assert os.listdir(out) == ["0"] and not leftover_files(out)
  with open(os.path.join(out, "0", "_CHECKPOINT_METADATA")) as f:
    assert json.load(f)["custom_metadata"] == {"scan_layers": True}
  items = os.path.join(out, "0", "items")
  writers = [n for n in os.listdir(items) if n.startswith("ocdbt.process_")]
  assert len(writers) <= 3  # the metadata writer and at most the two workers' own


def test_kill_9_of_the_holder_then_resume_takes_over_and_finishes(model, reference, tmp_path):
  out = str(tmp_path / "out")
  holder = start(cli_args("to_maxtext", (model,), out))
  wait_for(lambda: slices_stored(out), holder)
  holder.kill()  # SIGKILL of the driver alone, as `kill -9 <pid>`: its workers die with it
  holder.communicate()
  plain = run(cli_args("to_maxtext", (model,), out))
  assert plain.returncode == 2
  assert re.fullmatch(rf"error: {re.escape(out)} is held by a conversion that died \(to_maxtext, pid {holder.pid} on "
                      r"this host, .*, no longer running\); pass --resume to finish its work or --overwrite to start "
                      r"over", one_line(plain.stderr, "error: "))
  resumed = run(cli_args("to_maxtext", (model,), out, "--resume"))
  assert resumed.returncode == 0, resumed.stderr
  assert f"note: {out}: took over the lock of to_maxtext, pid {holder.pid} on this host" in resumed.stderr
  assert_same_maxtext(f"{out}/0/items", reference[0])
  assert os.listdir(out) == ["0"] and not leftover_files(out)


def test_a_lock_says_when_its_holder_is_gone(tmp_path):
  me = writer_lock.Holder.this_process("to_maxtext", {"scan_layers": True})
  assert me.alive() is True
  assert writer_lock.Holder(**{**me.__dict__, "pid_start": (me.pid_start or 0) + 1}).alive() is False  # pid reused
  assert writer_lock.Holder(**{**me.__dict__, "boot": "another-boot"}).alive() is False  # rebooted since
  assert writer_lock.Holder(**{**me.__dict__, "host": "tpu-vm-7"}).alive() is None  # cannot be checked from here
  path = writer_lock.lock_path(str(tmp_path))
  held = writer_lock.create(path, me)
  assert held and writer_lock.create(path, writer_lock.Holder.this_process("x", {})) is None
  other = writer_lock.Holder.this_process("to_huggingface", {})
  assert writer_lock.replace(path, other, other, None) is None  # not the lock that is there: refused
  taken = writer_lock.replace(path, other, me, None)
  assert taken and writer_lock.read(path)[0].run == other.run
  writer_lock.release(held)  # no longer ours: kept
  assert writer_lock.read(path)[0].run == other.run
  writer_lock.release(taken)
  assert writer_lock.read(path) is None and os.listdir(tmp_path) == []


def test_gs_lock_is_a_generation_precondition(gcs_bucket):
  out = f"gs://{gcs_bucket}/out"
  path = writer_lock.lock_path(out)
  remote = writer_lock.Holder(**{**writer_lock.Holder.this_process("to_maxtext", {}).__dict__, "host": "tpu-vm-7"})
  held = writer_lock.create(path, remote)
  assert held and held.generation
  assert writer_lock.create(path, writer_lock.Holder.this_process("to_maxtext", {})) is None
  found, generation = writer_lock.read(path)
  assert found.run == remote.run and generation == held.generation
  mine = writer_lock.Holder.this_process("to_maxtext", {})
  taken = writer_lock.replace(path, mine, found, generation)
  assert taken and taken.generation != held.generation
  late = writer_lock.Holder.this_process("to_maxtext", {})
  assert writer_lock.replace(path, late, found, generation) is None  # the generation it read is gone
  writer_lock.release(held)
  assert writer_lock.read(path)[0].run == mine.run
  writer_lock.release(taken)
  assert writer_lock.read(path) is None


def test_gs_destination_held_on_another_host_is_taken_over_only_with_resume(gcs_bucket, tmp_path):
  out = f"gs://{gcs_bucket}/qwen3"
  remote = writer_lock.Holder(**{**writer_lock.Holder.this_process("to_maxtext", {"scan_layers": True}).__dict__,
                                 "host": "tpu-vm-7", "pid": 4242})
  writer_lock.create(writer_lock.lock_path(out), remote)
  with pytest.raises(ConversionError, match=rf"^{re.escape(out)} is being written by another conversion \(to_maxtext, "
                                            r"pid 4242 on host tpu-vm-7, .*scan_layers=True\), which ckptflow cannot "
                                            r"check from here; if that run is gone .* pass --resume"):
    to_maxtext(goldens.path("qwen3", "hf"), out)
  _, items, _ = to_maxtext(goldens.path("qwen3", "hf"), out, "--resume")
  assert writer_lock.read(writer_lock.lock_path(out)) is None
  from tests.gcs_emulator import download_dir  # pylint: disable=import-outside-toplevel
  download_dir(out, str(tmp_path / "local"))
  goldens.assert_same_checkpoint(goldens.restore(str(tmp_path / "local" / "0" / "items")),
                                 goldens.restore(goldens.items("qwen3", "scan")))


# ---- interrupts ----------------------------------------------------------------------------------


def test_ctrl_c_of_to_maxtext_is_one_line_leaves_no_temporary_file_and_resumes(model, reference, tmp_path):
  out = str(tmp_path / "out")
  process = start(cli_args("to_maxtext", (model,), out))
  wait_for(whole_slice_stored(out, model), process)
  os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
  _, err = process.communicate(timeout=120)
  assert process.returncode == 130, err
  line = one_line(err, "interrupted: ")
  found = re.fullmatch(rf"interrupted: (\d+) of (\d+) slices stored in {re.escape(out)}/0/items; rerun with --resume",
                       line)
  assert found and 0 < int(found.group(1)) <= int(found.group(2)) == 57, line
  assert "Traceback" not in err and "CRITICAL" not in err
  assert not leftover_files(out) and os.listdir(out) == ["0"]
  # What to_huggingface makes of it: what it is, and how to finish it.
  back = run(["-m", "pipeline.to_huggingface", f"load_parameters_path={out}/0/items",
              f"base_output_directory={tmp_path / 'hf'}", f"--hf_model_path={model}"])
  assert back.returncode == 2
  assert re.fullmatch(rf"error: {re.escape(out)}/0/items: an interrupted conversion \(ckptflow's to_maxtext stopped "
                      r"before committing it: no _METADATA yet\); resume it with the to_maxtext command that started "
                      rf"it plus --resume \(base_output_directory={re.escape(out)}\)", one_line(back.stderr, "error: "))
  assert not (tmp_path / "hf").exists()
  done = run(cli_args("to_maxtext", (model,), out, "--resume"))
  assert done.returncode == 0, done.stderr
  assert_same_maxtext(f"{out}/0/items", reference[0])
  assert not leftover_files(out)


def test_ctrl_c_of_to_huggingface_is_one_line_leaves_whole_shards_only_and_resumes(model, reference, tmp_path):
  out = str(tmp_path / "hf")
  process = start(cli_args("to_huggingface", (f"{reference[0]}/0/items", model), out))
  wait_for(lambda: shard_stored(out), process)
  os.killpg(process.pid, signal.SIGINT)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 130, err
  line = one_line(err, "interrupted: ")
  assert re.fullmatch(rf"interrupted: \d+ of \d+ shards stored in {re.escape(out)}; rerun with --resume", line), line
  assert "Traceback" not in err and "CRITICAL" not in err
  assert not leftover_files(out)
  for name in os.listdir(out):  # only whole shards: each as large as the finished model's
    assert name.endswith(".safetensors") and os.path.getsize(os.path.join(out, name)) == os.path.getsize(
        os.path.join(reference[1], name)), name
  done = run(cli_args("to_huggingface", (f"{reference[0]}/0/items", model), out, "--resume"))
  assert done.returncode == 0, done.stderr
  assert_same_hf(out, reference[1])
  assert not leftover_files(out)


@pytest.mark.parametrize("mode", ["multi_threading", "multi_processing"])
def test_sigterm_is_one_line_and_exit_143(model, reference, tmp_path, mode):
  out = str(tmp_path / "hf")
  process = start(cli_args("to_huggingface", (f"{reference[0]}/0/items", model), out, f"--direct_running_mode={mode}"))
  wait_for(lambda: shard_stored(out), process)
  process.terminate()  # the driver alone, as `kill <pid>` or a scheduler's timeout
  _, err = process.communicate(timeout=120)
  assert process.returncode == 143, err
  one_line(err, "interrupted: ")
  assert not leftover_files(out)


def test_a_stop_ends_the_writes_in_flight_and_refuses_new_ones():
  """What an interrupt does to workers that are threads: stop() returns once no other thread is inside
  work(); a thread's next check() raises, and so does a new work(); the caller's own work() is not waited for."""
  started, blocks, failures = threading.Event(), [], []

  def worker():
    try:
      with stopping.work():
        started.set()
        for i in range(10_000):
          stopping.check()
          blocks.append(i)
          time.sleep(0.001)
    except stopping.Stopped as e:
      failures.append(e)

  thread = threading.Thread(target=worker)
  try:
    thread.start()
    started.wait(10)
    with stopping.work():  # the driver's own write (the in-process runner) does not hold it up
      assert stopping.stop(timeout=30)
    written = len(blocks)
    time.sleep(0.05)
    assert len(blocks) == written < 10_000 and len(failures) == 1
    with pytest.raises(stopping.Stopped):
      with stopping.work():
        pass
  finally:
    stopping.reset()
    thread.join(30)
  with stopping.work():
    stopping.check()


def test_a_failing_worker_thread_is_one_line(tmp_path):
  """A damaged chunk fails inside a worker thread: Beam prints and logs its traceback there, before the
  driver gets the same failure; the user sees one line (and the traceback with --verbose)."""
  shutil.copytree(goldens.path("qwen3", "maxtext_scan"), tmp_path / "ckpt", copy_function=shutil.copyfile)
  items = tmp_path / "ckpt" / "0" / "items"
  data = max((p for p in items.rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[:] = bytes(len(raw))  # every value stored in this file is zeros: no zstd frame decodes
  data.write_bytes(raw)
  args = ["-m", "pipeline.to_huggingface", f"load_parameters_path={items}", f"base_output_directory={tmp_path / 'hf'}",
          f"--hf_model_path={goldens.path('qwen3', 'hf')}", "--direct_running_mode=multi_threading",
          "--direct_num_workers=2"]
  quiet = run(args)
  assert quiet.returncode == 2, quiet.stderr[-3000:]
  assert re.fullmatch(rf"error: {re.escape(str(items))}: cannot read .*the checkpoint is incomplete or damaged",
                      one_line(quiet.stderr, "error: "))
  assert "Traceback" not in quiet.stderr and not (tmp_path / "hf" / "config.json").exists()
  loud = run([*args, "--verbose"])
  assert loud.returncode == 2 and "Traceback" in loud.stderr and "sdk_worker" in loud.stderr


def test_stale_temporary_files_of_an_earlier_run_are_removed_by_the_next(model, reference, tmp_path):
  mt = tmp_path / "mt"
  to_maxtext(goldens.path("qwen3", "hf"), str(mt))
  items = mt / "0" / "items"
  for marker in ("commit_success.txt", "_METADATA"):  # as a run killed before its commit leaves it
    os.remove(items / marker)
  os.remove(mt / "0" / "commit_success.txt")
  writer = next(p for p in items.iterdir() if re.fullmatch(r"ocdbt\.process_[0-9a-f]{16}", p.name))
  stale = [writer / "d" / "0123456789abcdef0123456789abcdef.__lock", writer / "manifest.ocdbt.__lock",
           items / "._METADATA.a1b2c3d4.tmp", mt / ".ckptflow-probe-123", mt / ".ckptflow.lock.0a1b2c3d.stale"]
  for path in stale:
    path.write_bytes(b"partial")
  never_committed = items / "ocdbt.process_00112233445566ff"
  (never_committed / "d").mkdir(parents=True)
  (never_committed / "d" / "ffeeddccbbaa99887766554433221100").write_bytes(b"data nobody refers to")
  to_maxtext(goldens.path("qwen3", "hf"), str(mt), "--resume")
  assert not any(p.exists() for p in stale) and not never_committed.exists()
  goldens.assert_same_checkpoint(goldens.restore(str(items)), goldens.restore(goldens.items("qwen3", "scan")))

  hf = tmp_path / "hf"
  to_hf(f"{reference[0]}/0/items", str(hf), model)
  os.remove(hf / "config.json")  # an upload that never finished
  shard = sorted(n for n in os.listdir(hf) if n.endswith(".safetensors"))[0]
  stale = [hf / f"{shard}.deadbeef.tmp", hf / ".config.json.k2j4h5g6.tmp", hf / ".ckptflow-probe-77"]
  for path in stale:
    path.write_bytes(b"partial")
  mine = hf / ".notes.abcdefgh.tmp"  # not a name we write: left alone
  mine.write_text("the user's")
  to_hf(f"{reference[0]}/0/items", str(hf), model, "--resume")
  assert not any(p.exists() for p in stale) and mine.exists()
  os.remove(mine)
  assert_same_hf(str(hf), reference[1])


def test_verbose_adds_the_traceback():
  for argv, traced in (([], False), (["--verbose"], True), (["--verbose=false"], False)):
    done = subprocess.run([sys.executable, "-c", "import sys; from pipeline import cli; from transforms.errors import "
                           "ConversionError\ndef main(a):\n  raise ConversionError('x.safetensors: truncated')\n"
                           "sys.exit(cli.run_main(main))", *argv], cwd=goldens.REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == "error: x.safetensors: truncated"
    assert ("Traceback" in done.stderr) == traced, done.stderr
  assert cli.is_verbose(["--verbose", "--verbose=no"]) is False and cli.is_verbose(["--verbose=yes"]) is True


# ---- batches --------------------------------------------------------------------------------------


def write_jobs(path, jobs):
  path.write_text(json.dumps({"jobs": jobs}))  # JSON is YAML
  return str(path)


def test_batch_refuses_two_jobs_with_one_destination_before_either_starts(tmp_path):
  out = str(tmp_path / "out")
  jobs = [{"name": "a", "direction": "to_maxtext", "source": goldens.path("qwen3", "hf"), "destination": out},
          {"name": "b", "direction": "to_maxtext", "source": goldens.path("llama3.1", "hf"), "destination": out + "/"}]
  with pytest.raises(ConversionError, match=r"jobs 1 \(a\) and 2 \(b\) both write .*; give each job its own "
                                            r"destination"):
    batch.load_jobs(write_jobs(tmp_path / "jobs.yaml", jobs))
  jobs[1]["destination"] = out + "/0"
  with pytest.raises(ConversionError, match=r"jobs 1 \(a\) and 2 \(b\) write into each other"):
    batch.load_jobs(write_jobs(tmp_path / "jobs.yaml", jobs))
  assert not os.path.exists(out)


def test_batch_skips_a_busy_destination_and_takes_over_a_dead_one_only_when_asked(tmp_path, capsys):
  out = str(tmp_path / "out")
  lock = writer_lock.lock_path(out)
  live = writer_lock.create(lock, writer_lock.Holder.this_process("to_maxtext", {"scan_layers": True}))
  job = {"name": "q", "direction": "to_maxtext", "source": goldens.path("qwen3", "hf"), "destination": out,
         "options": list(IN_PROCESS)}
  results = batch.run_all(batch.load_jobs(write_jobs(tmp_path / "jobs.yaml", [job])))
  assert results[0][2] and results[0][1].startswith("skipped (busy: being written by to_maxtext, pid ")
  writer_lock.release(live)
  dead = writer_lock.Holder(**{**writer_lock.Holder.this_process("to_maxtext", {}).__dict__, "pid": 2**22 + 7})
  writer_lock.create(lock, dead)
  results = batch.run_all(batch.load_jobs(write_jobs(tmp_path / "jobs.yaml", [job])))
  assert not results[0][2] and "is held by a conversion that died" in results[0][1]
  job["options"].append("--resume")
  results = batch.run_all(batch.load_jobs(write_jobs(tmp_path / "jobs.yaml", [job])))
  assert results[0][2], results
  assert writer_lock.read(lock) is None and os.listdir(out) == ["0"]
  capsys.readouterr()


def test_every_file_of_a_finished_run_is_the_checkpoints(tmp_path):
  """After a run the destination holds its checkpoint, and no lock, probe or temporary file."""
  out = tmp_path / "mt"
  to_maxtext(goldens.path("qwen3", "hf"), str(out))
  assert sorted(os.listdir(out)) == ["0"]
  assert sorted(os.listdir(out / "0")) == ["_CHECKPOINT_METADATA", "ckptflow_manifest.json", "commit_success.txt",
                                           "items"]
  assert not leftover_files(str(out))
  hf = tmp_path / "hf"
  to_hf(goldens.items("qwen3", "scan"), str(hf), goldens.path("qwen3", "hf"))
  assert "config.json" in os.listdir(hf) and not [n for n in os.listdir(hf) if n.startswith(".")]


# ---- hf:// destinations: the local scratch space ------------------------------------------------


def test_hub_upload_checks_the_local_scratch_space_before_the_first_byte(server, small_disk, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  scratch = small_disk(2**20)
  monkeypatch.setattr("tempfile.tempdir", scratch)
  with pytest.raises(ConversionError, match=rf"^{re.escape(scratch)} has 1\.05 MB free; this conversion writes "
                                            r"4\.\d+ MB \(the shards bound for the Hub are written there first: set "
                                            r"TMPDIR to a larger disk\)$"):
    to_hf(goldens.items("qwen3", "scan"), "hf://me/out", goldens.path("qwen3", "hf"), "--max_shard_size=100KB")
  assert "me/out" not in server.repos


def test_hub_upload_whose_scratch_fills_removes_the_shards_it_uploaded(server, small_disk, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  scratch = small_disk(8 * 2**20)
  monkeypatch.setattr("tempfile.tempdir", scratch)
  checked = []
  check = disk_full.check_scratch

  def then_another_process_takes_the_space(directory, needed, what):
    check(directory, needed, what)
    checked.append(what)
    if len(checked) == 2:  # after the first shard is uploaded
      fill(scratch)
  monkeypatch.setattr(disk_full, "check_scratch", then_another_process_takes_the_space)
  with pytest.raises(ConversionError, match=rf"^{re.escape(scratch)}/ckptflow-shard-\d+-\w+: out of space writing "
                                            r"shard model-\d+-of-\d+\.safetensors \(local copy for hf://me/out/.+\) "
                                            r"\(No space left on device\); removed everything this run wrote: free space, then "
                                            r"run it again$"):
    to_hf(goldens.items("qwen3", "scan"), "hf://me/out", goldens.path("qwen3", "hf"), "--max_shard_size=100KB")
  commits = server.repos["me/out"].committed
  assert len(commits) == 2 and commits[-1][0].startswith("-model-")  # one shard uploaded, then deleted
  assert not [n for n in server.files("me/out") if n.endswith(".safetensors")]
  assert os.listdir(scratch) == ["filler"]
