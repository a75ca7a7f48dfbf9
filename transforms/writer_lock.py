"""One writer per output: a lock file a run creates exclusively before it writes anything there.

Locally the lock appears by a hard link of a finished temporary file (atomic and exclusive on local
file systems and NFS, and readers never see it half-written; O_EXCL where links are not supported).
On gs:// it is an upload with the precondition ifGenerationMatch=0, which GCS evaluates itself, so
it holds across machines and Dataflow workers. The file says who holds it (host, pid, start time,
the command's key options), so the run it stops can say so in one line.

A holder that died (kill -9, a lost VM) leaves its lock behind. Replacing it is a compare-and-swap
on the lock that was examined (gs://: ifGenerationMatch=<its generation>; locally: rename it away
and check it is still that one), so two runs taking over one dead lock never both win.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import socket
import time
import uuid
from typing import Any

from transforms import files

LOCK_NAME = ".ckptflow.lock"


def _boot_id() -> str | None:
  """Changes on every boot of this machine: a lock from before a reboot is dead whatever its pid."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _process_start(pid: int) -> int | None:
  """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for it."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock, as its file records it."""
  run: str
  command: str
  host: str
  pid: int
  started: float
  options: dict[str, Any]
  boot: str | None = None
  pid_start: int | None = None
  remote: str | None = None  # the runner of a job that runs elsewhere (Dataflow): its launcher's pid says nothing

  @classmethod
  def this_process(cls, command: str, options: dict[str, Any], remote: str | None = None) -> "Holder":
    recorded = {k: v for k, v in options.items() if v not in (None, False, "")}
    return cls(uuid.uuid4().hex, command, socket.gethostname(), os.getpid(), time.time(), recorded, _boot_id(),
               _process_start(os.getpid()), remote)

  def to_json(self) -> str:
    record = dataclasses.asdict(self)
    record["started_utc"] = _utc(self.started)
    return json.dumps(record, indent=1, sort_keys=True) + "\n"

  @classmethod
  def from_json(cls, text: str) -> "Holder | None":
    try:
      record = json.loads(text)
      return cls(str(record["run"]), str(record["command"]), str(record["host"]), int(record["pid"]),
                 float(record["started"]), dict(record.get("options") or {}), record.get("boot"),
                 record.get("pid_start"), record.get("remote"))
    except (ValueError, KeyError, TypeError):
      return None

  def alive(self) -> bool | None:
    """True or False for a holder on this machine; None for another host, which cannot be checked
    from here (it may be a machine that is gone), and for a job submitted to a remote runner."""
    if self.host != socket.gethostname() or self.remote:
      return None
    boot = _boot_id()
    if self.boot and boot and self.boot != boot:
      return False
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass  # another user's process: it exists
    start = _process_start(self.pid)
    return not (self.pid_start is not None and start is not None and start != self.pid_start)

  def describe(self, now: float | None = None) -> str:
    """'to_maxtext, pid 4242 on this host, started 2026-12-02 02:03:04 UTC (12s ago), scan_layers=True'."""
    where = "this host" if self.host == socket.gethostname() else f"host {self.host}"
    options = " ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
    age = _age((now or time.time()) - self.started)
    who = f"a {self.remote} job submitted by pid {self.pid}" if self.remote else f"pid {self.pid}"
    return f"{self.command}, {who} on {where}, started {_utc(self.started)} ({age} ago)" + (
        f", {options}" if options else "")


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
  seconds = max(0.0, seconds)
  if seconds < 120:
    return f"{seconds:.0f}s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  if seconds < 172800:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.0f} days"


@dataclasses.dataclass(frozen=True)
class Held:
  """A lock this run holds: enough to release it from any process (a Dataflow job's last step)."""
  path: str
  run: str
  generation: str | None = None  # gs:// only


def lock_path(destination: str) -> str:
  return files.join(destination, LOCK_NAME)


def read(path: str) -> tuple[Holder | None, str | None] | None:
  """(holder, gs:// generation) of the lock at `path`, None when there is none; the holder is None
  when the file cannot be parsed (it is still a lock)."""
  try:
    if files.is_gcs(path):
      fs = files.filesystem(path)
      info = fs.info(path)
      return Holder.from_json(fs.cat_file(path).decode("utf-8", "replace")), str(info.get("generation"))
    with open(path, encoding="utf-8", errors="replace") as f:
      return Holder.from_json(f.read()), None
  except FileNotFoundError:
    return None


def create(path: str, holder: Holder) -> Held | None:
  """Creates the lock if there is none; None if one exists. OSError if the directory is not writable."""
  data = holder.to_json().encode()
  if files.is_gcs(path):
    try:
      return Held(path, holder.run, _gcs_upload(path, data, if_generation_match="0"))
    except FileExistsError:
      return None
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.{holder.run[:8]}.new"
  with open(tmp, "wb") as f:
    f.write(data)
  try:
    os.link(tmp, path)
  except FileExistsError:
    return None
  except OSError as e:
    if e.errno not in _NO_HARD_LINKS:
      raise
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return None
    with os.fdopen(fd, "wb") as f:
      f.write(data)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
  return Held(path, holder.run)


_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)


def replace(path: str, holder: Holder, stale: Holder | None, stale_generation: str | None) -> Held | None:
  """Takes over the lock `stale` (as read, with its generation): None if it changed meanwhile."""
  if files.is_gcs(path):
    try:
      return Held(path, holder.run, _gcs_upload(path, holder.to_json().encode(), if_generation_match=stale_generation))
    except (FileExistsError, FileNotFoundError):
      return None
  aside = f"{path}.{holder.run[:8]}.stale"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return create(path, holder)
  with open(aside, encoding="utf-8", errors="replace") as f:
    moved = Holder.from_json(f.read())
  if (moved and moved.run) != (stale and stale.run):  # another run replaced it between our read and rename
    try:
      os.link(aside, path)
    except OSError:
      pass
    os.remove(aside)
    return None
  os.remove(aside)
  return create(path, holder)


def release(held: Held | None) -> None:
  """Removes the lock if it is still this run's (a run that took it over keeps it)."""
  if held is None:
    return
  found = read(held.path)
  if found is None or found[0] is None or found[0].run != held.run:
    return
  if files.is_gcs(held.path):
    bucket, key = _bucket_key(held.path)
    try:
      files.filesystem(held.path).call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=found[1])
    except (FileNotFoundError, FileExistsError):
      pass
    return
  try:
    os.remove(held.path)
  except FileNotFoundError:
    pass


def _bucket_key(path: str) -> tuple[str, str]:
  bucket, _, key = path[len("gs://"):].partition("/")
  return bucket, key


def _gcs_upload(path: str, data: bytes, if_generation_match: str | None) -> str:
  """One multipart upload with a generation precondition (412 -> FileExistsError); the new generation."""
  fs = files.filesystem(path)
  bucket, key = _bucket_key(path)
  boundary = "==ckptflow-lock=="
  body = (f"--{boundary}\nContent-Type: application/json; charset=UTF-8\n\n{json.dumps({'name': key})}\n"
          f"--{boundary}\nContent-Type: application/json\n\n").encode() + data + f"\n--{boundary}--".encode()
  conditions = {} if if_generation_match is None else {"ifGenerationMatch": if_generation_match}
  endpoint = fs._location  # pylint: disable=protected-access
  result = fs.call("POST", f"{endpoint}/upload/storage/v1/b/{bucket}/o", uploadType="multipart",
                   headers={"Content-Type": f'multipart/related; boundary="{boundary}"'}, data=body, json_out=True,
                   **conditions)
  fs.invalidate_cache(path)
  return str(result.get("generation"))
