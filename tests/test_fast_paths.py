"""The fast paths of issue 18 give the same bytes as the plain ones: packed transposes, mapped reads,
early writeback and the huge-page restart."""
import os
import shutil
import subprocess
import sys
import threading

import ml_dtypes
import numpy as np
import pytest

from pipeline import hugepages
from transforms import direct_io, files, tensor_ops, writeback
from transforms.safetensors_io import list_checkpoint, read_tensor, write_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("shape,dtype", [
    ((4099, 515), np.uint16),  # rows not a multiple of the packing: the packed part and the rest
    ((1024, 700), np.uint16),
    ((600, 300), np.float32),
    ((300, 257), np.uint8),
    ((96, 80), np.float64),
    ((40, 30), np.dtype("V3")),  # no packing at all
])
@pytest.mark.parametrize("band_bytes", [tensor_ops.PARALLEL_COPY, 4096])
def test_transpose_copy_is_bit_exact(shape, dtype, band_bytes, monkeypatch):
  """One band, and (with small bands) every CPU's band meeting the next at a multiple of the tile."""
  monkeypatch.setattr(tensor_ops, "PARALLEL_COPY", band_bytes)
  monkeypatch.setattr(tensor_ops.os, "cpu_count", lambda: 3)
  rng = np.random.default_rng(7)
  dtype = np.dtype(dtype)
  a = rng.integers(0, 256, (shape[0], shape[1] * dtype.itemsize), dtype=np.uint8).view(dtype)
  out = tensor_ops.transpose_copy(a)
  assert out.flags.c_contiguous and out.shape == (shape[1], shape[0])
  assert out.view(np.uint8).tobytes() == np.ascontiguousarray(a.T).view(np.uint8).tobytes()


def test_transpose_copy_keeps_every_nan_payload(monkeypatch):
  """bf16 NaNs of any payload (as random weights hold) come through the 16-byte items unchanged, in
  bands on two threads."""
  monkeypatch.setattr(tensor_ops, "PARALLEL_COPY", 2**18)
  monkeypatch.setattr(tensor_ops.os, "cpu_count", lambda: 2)
  bits = np.arange(2**16, dtype=np.uint16)
  a = np.resize(bits, (512, 1024)).view(ml_dtypes.bfloat16)
  assert np.array_equal(tensor_ops.transpose_copy(a).view(np.uint16), np.ascontiguousarray(a.T).view(np.uint16))


def test_contiguous_of_a_transposed_view_casts_like_numpy():
  x = np.random.default_rng(3).standard_normal((512, 384)).astype(np.float32)
  view = x.reshape(512, 3, 128).transpose(2, 1, 0)
  got = tensor_ops.contiguous(view, ml_dtypes.bfloat16)
  assert got.flags.c_contiguous and got.shape == view.shape
  assert np.array_equal(got.view(np.uint16), view.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_mapped_reads_are_the_bytes_of_a_plain_read(tmp_path):
  path = tmp_path / "blob"
  data = os.urandom(3 * 2**16 + 123)
  path.write_bytes(data)
  for start, end in [(0, len(data)), (5, 70001), (65536, 65540), (len(data) - 3, len(data) + 50), (9, 9)]:
    assert bytes(files.read_range(str(path), start, end)) == files.read_bytes(str(path), start, end)
  assert bytes(files.read_range(str(path), len(data) + 1, len(data) + 9)) == b""


def test_a_mapped_tensor_is_read_only_and_exact(tmp_path):
  rng = np.random.default_rng(1)
  tensors = {"a": rng.standard_normal((300, 7)).astype(np.float32),
             "b": rng.standard_normal((64, 33)).astype(ml_dtypes.bfloat16)}
  write_safetensors(str(tmp_path / "model.safetensors"), tensors)
  for name, ref in list_checkpoint(str(tmp_path)).items():
    value = read_tensor(ref)
    assert not value.flags.writeable
    assert np.array_equal(value.view(np.uint8), tensors[name].view(np.uint8))
    assert np.array_equal(read_tensor(ref, (10, 20)), tensors[name][10:20])


def test_writeback_syncs_the_written_file_system_once_enough_is_written(tmp_path, monkeypatch):
  synced = []
  done = threading.Event()

  def record(path):
    synced.append(path)
    done.set()
  monkeypatch.setattr(writeback, "sync_file_system", record)
  monkeypatch.setattr(writeback, "WRITEBACK_BYTES", 1000)
  monkeypatch.setattr(writeback, "_WRITEBACK", writeback._Writeback())  # pylint: disable=protected-access
  writeback.wrote(str(tmp_path), 999)
  assert not done.wait(0.3)
  writeback.wrote(str(tmp_path), 1)
  assert done.wait(5) and synced == [str(tmp_path)]
  writeback.wrote("gs://bucket/x", 10**9)  # object stores write their own way
  assert not synced[1:]


def test_sync_file_system_tolerates_a_removed_directory(tmp_path):
  writeback.sync_file_system(str(tmp_path))
  writeback.sync_file_system(str(tmp_path / "gone"))


def test_the_huge_page_restart_happens_only_for_our_own_programs():
  assert not hugepages.is_entry_point()  # pytest's main program: never re-executed
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CKPTFLOW_HUGEPAGES")}
  probe = ("import os, sys; sys.argv = ['x', '--help']; from pipeline import hugepages; "
           "print(hugepages.wanted())")
  wanted = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
  shown = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES', ''))"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
  assert shown == ""
  # The command restarts itself with the tunable, which its own process then sees (and restarts no more).
  script = ("import os, sys\nif __name__ == '__main__':\n  from pipeline import hugepages\n  hugepages.use()\n"
            "  print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''))\n")
  pkg = os.path.join(ROOT, "pipeline")
  probe_module = os.path.join(pkg, "_hugepage_probe.py")
  with open(probe_module, "w", encoding="utf-8") as f:
    f.write(script)
  try:
    out = subprocess.run([sys.executable, "-m", "pipeline._hugepage_probe"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
  finally:
    os.remove(probe_module)
  assert out.count("tunables=") == 1
  assert (hugepages.TUNABLE in out) == wanted
  off = subprocess.run([sys.executable, "-m", "pipeline.to_maxtext", "--help"],
                       env={**env, "CKPTFLOW_HUGEPAGES": "0"}, cwd=ROOT, capture_output=True, text=True)
  assert off.returncode == 0


def record_fadvise(monkeypatch):
  """(file, offset, length) of each POSIX_FADV_DONTNEED asked for."""
  dropped = []

  def fadvise(fd, offset, length, advice):
    assert advice == os.POSIX_FADV_DONTNEED
    dropped.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))
  monkeypatch.setattr(os, "posix_fadvise", fadvise)
  return dropped


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_a_shard_drops_its_cached_pages_a_step_behind_what_it_wrote(tmp_path, monkeypatch):
  """On a file system without O_DIRECT (transforms/direct_io.py), where a shard goes through the cache."""
  monkeypatch.delattr(os, "O_DIRECT", raising=False)
  monkeypatch.setattr(direct_io, "STAGING_BYTES", 1024)  # written in several pieces
  monkeypatch.setattr(direct_io, "_spare", [])
  monkeypatch.setattr(writeback, "WRITEBACK_BYTES", 1000)
  dropped = record_fadvise(monkeypatch)
  tensors = {f"t{i}": np.full((150,), i, np.float32) for i in range(12)}  # 600 bytes each, 7200 in all
  path = tmp_path / "model.safetensors"
  write_safetensors(str(path), tensors)
  assert dropped and all(p.endswith(".tmp") for p, _, _ in dropped)
  ends = [offset + length for _, offset, length in dropped]
  assert [offset for _, offset, _ in dropped] == [0, *ends[:-1]]  # each range follows the last, none twice
  assert len(dropped) > 1 and ends[-1] <= os.path.getsize(path) - 1000  # never the last WRITEBACK_BYTES written
  read = {name: read_tensor(ref) for name, ref in list_checkpoint(str(tmp_path)).items()}
  assert all(np.array_equal(read[name], value) for name, value in tensors.items())


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_another_writers_data_files_are_dropped_after_each_sync_once_per_size(tmp_path, monkeypatch):
  data = tmp_path / "ocdbt.process_x" / "d"
  data.mkdir(parents=True)
  (data / "a").write_bytes(b"1" * 10)
  monkeypatch.setattr(writeback, "sync_file_system", lambda path: None)
  dropped = record_fadvise(monkeypatch)
  passes = writeback._Writeback()  # pylint: disable=protected-access
  passes._drop_synced(str(data))  # pylint: disable=protected-access
  (data / "b").write_bytes(b"2" * 10)
  passes._drop_synced(str(data))  # pylint: disable=protected-access
  with open(data / "a", "ab") as f:
    f.write(b"more")
  passes._drop_synced(str(data))  # pylint: disable=protected-access
  assert [(os.path.basename(p), o, n) for p, o, n in dropped] == [("a", 0, 0), ("b", 0, 0), ("a", 0, 0)]
  passes._drop_dirs.add(str(data))  # pylint: disable=protected-access
  shutil.rmtree(data)
  passes._drop_synced(str(data))  # a finished job's directory is forgotten  # pylint: disable=protected-access
  assert not passes._drop_dirs and not passes._dropped  # pylint: disable=protected-access
