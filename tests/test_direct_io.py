"""transforms.direct_io: the same bytes as a plain write, whatever the sizes, the file system or the failure."""
import errno
import os

import numpy as np
import pytest

from transforms import direct_io
from transforms import safetensors_io as sio


@pytest.fixture
def small_staging(monkeypatch):
  """Staging buffers of 2 blocks and a queue of 3, so a few KB cross every boundary."""
  monkeypatch.setattr(direct_io, "STAGING_BYTES", 2 * direct_io.ALIGN)
  monkeypatch.setattr(direct_io, "QUEUE_BYTES", 3 * direct_io.ALIGN)
  monkeypatch.setattr(direct_io, "_spare", [])


def write_pieces(path: str, sizes: list[int]) -> tuple[bytes, direct_io.DirectFile]:
  rng = np.random.default_rng(len(sizes))
  pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
  f = direct_io.DirectFile(path)
  for piece in pieces:
    f.write(piece)
  f.close()
  return b"".join(p.tobytes() for p in pieces), f


SIZES = [[], [1], [4096], [8192], [8193], [3, 5000, 12288, 1, 0, 20000], [40000]]


@pytest.mark.parametrize("sizes", SIZES)
def test_the_file_holds_exactly_what_was_written(tmp_path, small_staging, sizes):
  path = str(tmp_path / "f")
  expected, f = write_pieces(path, sizes)
  with open(path, "rb") as g:
    assert g.read() == expected
  assert f.size == len(expected) and f.fd == -1


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")
def test_the_local_disk_takes_direct_writes(tmp_path):
  f = direct_io.DirectFile(str(tmp_path / "f"))
  f.write(b"x" * 5)
  f.close()
  assert f.direct  # the development VM's ext4: the shard bypasses the page cache


def test_a_file_system_without_o_direct_gets_the_same_bytes(tmp_path, small_staging, monkeypatch):
  real_open = os.open

  def refuse_direct(path, flags, mode=0o777):
    if flags & getattr(os, "O_DIRECT", 0):
      raise OSError(errno.EINVAL, "Invalid argument")
    return real_open(path, flags, mode)
  monkeypatch.setattr(os, "open", refuse_direct)
  path = str(tmp_path / "f")
  expected, f = write_pieces(path, SIZES[5])
  assert not f.direct
  with open(path, "rb") as g:
    assert g.read() == expected


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")
def test_a_direct_write_refused_midway_goes_on_buffered(tmp_path, small_staging, monkeypatch):
  real_pwrite = os.pwrite
  calls = []

  def refuse_second(fd, data, offset):
    calls.append(offset)
    if len(calls) == 2:
      raise OSError(errno.EINVAL, "Invalid argument")
    return real_pwrite(fd, data, offset)
  monkeypatch.setattr(os, "pwrite", refuse_second)
  path = str(tmp_path / "f")
  expected, f = write_pieces(path, SIZES[5])
  assert not f.direct and calls[1] == calls[2]  # the refused block was written again, buffered
  with open(path, "rb") as g:
    assert g.read() == expected


def test_a_failed_write_reaches_the_caller_and_leaves_no_shard(tmp_path, small_staging, monkeypatch):
  def full(fd, data, offset):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "pwrite", full)
  path = str(tmp_path / "w.safetensors")
  entries = [(f"t{i}", "F32", (3000,)) for i in range(4)]
  with pytest.raises(OSError) as raised:
    with sio.SafetensorsWriter(path, entries) as w:
      for name, _, shape in entries:
        w.write(name, np.ones(shape, np.float32))
  assert raised.value.errno == errno.ENOSPC
  assert os.listdir(tmp_path) == []


def test_a_shard_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
  events = []
  real_fsync, real_replace = os.fsync, os.replace
  monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
  monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
  tensors = {"a": np.arange(10_001, dtype=np.float32), "b": np.ones((3, 7), np.int8)}
  sio.write_safetensors(str(tmp_path / "m.safetensors"), tensors)
  assert events == ["fsync", "rename"]
  read = {n: sio.read_tensor(r) for n, r in sio.read_header(str(tmp_path / "m.safetensors")).items()}
  assert all(np.array_equal(read[n], v) for n, v in tensors.items())


def test_an_aborted_file_stops_and_lets_go_of_its_descriptor(tmp_path, small_staging):
  f = direct_io.DirectFile(str(tmp_path / "f"))
  f.write(np.zeros(50_000, np.uint8))
  f.abort()
  assert f.fd == -1 and not f._thread.is_alive()  # pylint: disable=protected-access
