"""Local paths and gs:// URLs behind one small API: the storage that can be written in place.

Every "file is missing" becomes a one-line ConversionError naming the path. transforms/storage.py
adds hf:// Hub repos on top (read through transforms/hub_io.py, which keeps its cache here).
"""

import contextlib
import mmap
import os
import shutil
import tempfile
from typing import Any

# gcsfs reads this at import time; left on, every call against the emulator (and against
# buckets without hierarchical namespace) first waits ~60 s on a gRPC probe.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # pylint: disable=g-import-not-at-top

from transforms.errors import ConversionError  # pylint: disable=g-import-not-at-top

_GCS_PREFIX = "gs://"

# (pid, protocol, endpoint) -> filesystem. The pid keeps a forked worker from reusing its
# parent's event loop and HTTP session; the endpoint lets tests point at a new emulator.
_FILESYSTEMS: dict[tuple[int, str, str], fsspec.AbstractFileSystem] = {}


def is_gcs(path: str) -> bool:
  return path.startswith(_GCS_PREFIX)


def _emulator_url() -> str:
  host = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if host and "://" not in host:
    host = "http://" + host
  return host.rstrip("/")


def filesystem(path: str) -> fsspec.AbstractFileSystem:
  """The fsspec filesystem for `path`, created once per process (gcsfs sessions are costly)."""
  protocol = "gs" if is_gcs(path) else "file"
  endpoint = _emulator_url() if protocol == "gs" else ""
  key = (os.getpid(), protocol, endpoint)
  fs = _FILESYSTEMS.get(key)
  if fs is None:
    if protocol == "gs":
      import gcsfs  # pylint: disable=g-import-not-at-top
      options: dict[str, Any] = {
          # Other Beam workers write the same prefixes; a listing cache would go stale.
          "use_listings_cache": False,
          "skip_instance_cache": True,
      }
      if endpoint:
        options.update(token="anon", endpoint_url=endpoint)
      fs = gcsfs.GCSFileSystem(**options)
    else:
      fs = fsspec.filesystem("file")
    _FILESYSTEMS[key] = fs
  return fs


def join(base: str, *parts: str) -> str:
  """Joins with "/" for both kinds of path; later parts never reset to the root."""
  pieces = [p.strip("/") for p in parts if p.strip("/")]
  if not pieces:
    return base
  if not base:
    return "/".join(pieces)
  return base.rstrip("/") + "/" + "/".join(pieces)  # base "/" -> "" + "/" + ...


def parent(path: str) -> str:
  """The directory holding `path` (local or gs://)."""
  return path.rstrip("/").rsplit("/", 1)[0]


def _missing(path: str) -> ConversionError:
  return ConversionError(f"{path}: no such file")


def exists(path: str) -> bool:
  if not is_gcs(path):
    return os.path.exists(path)
  return filesystem(path).exists(path)


def size(path: str) -> int:
  try:
    if not is_gcs(path):
      return os.path.getsize(path)
    return int(filesystem(path).size(path))
  except FileNotFoundError:
    raise _missing(path) from None


@contextlib.contextmanager
def _file_errors(path: str):
  """A missing or unreadable file (local, or gs:// through gcsfs) as one line."""
  try:
    yield
  except (FileNotFoundError, IsADirectoryError):
    raise _missing(path) from None
  except PermissionError:
    raise ConversionError(f"{path}: permission denied") from None


def read_bytes(path: str, start: int | None = None, end: int | None = None) -> bytes:
  """One ranged read of [start, end); fewer bytes come back if the file is shorter."""
  if start is not None and end is not None and end <= start:
    return b""
  if not is_gcs(path):
    with _file_errors(path), open(path, "rb") as f:
      if start:
        f.seek(start)
      return f.read() if end is None else f.read(end - (start or 0))
  with _file_errors(path):
    try:
      return filesystem(path).cat_file(path, start=start, end=end)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
      raise
    except Exception as e:  # gcsfs.retry.HttpError; imported lazily with gcsfs.
      if getattr(e, "code", None) == 416:  # Range starts at or past the end of the object.
        return b""
      # gcsfs has already retried transient errors (5xx, dropped connections) with backoff.
      raise ConversionError(f"{path}: storage error that persisted through retries: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}") from None


def read_range(path: str, start: int, end: int) -> memoryview | bytes:
  """Bytes [start, end) of a file: for a local file a read-only mapping of the page cache's own pages
  (no copy, and about a tenth of the kernel time of read(); only the pages used are ever touched),
  for gs:// one ranged read. Fewer bytes come back if the file is shorter.

  The mapping lives as long as what views it; the file must not be truncated meanwhile (the
  planner has checked every tensor's extent against the file's size).
  """
  if is_gcs(path) or end <= start:
    return read_bytes(path, start, end)
  with _file_errors(path), open(path, "rb") as f:
    stop = min(end, os.fstat(f.fileno()).st_size)
    if stop <= start:
      return b""
    base = start - start % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(f.fileno(), stop - base, offset=base, access=mmap.ACCESS_READ)
  if hasattr(mmap, "MADV_WILLNEED"):
    mapped.madvise(mmap.MADV_WILLNEED)  # a cold file is read ahead in full while the first pages are used
  return memoryview(mapped)[start - base:]


def read_text(path: str) -> str:
  data = read_bytes(path)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    raise ConversionError(f"{path}: not UTF-8 text") from None


def umask() -> int:
  """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def new_file_mode() -> int:
  """The permissions open() gives a new file under the user's umask (0644 under 022)."""
  return 0o666 & ~umask()


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole object at once; a local reader never sees a partial file.

  The file gets the permissions any new file would (mkstemp's own 0600 would hide a model's
  config and metadata from the other users who can read its weights)."""
  if is_gcs(path):
    filesystem(path).pipe_file(path, data)
    return
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    os.fchmod(fd, new_file_mode())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def fingerprint(path: str) -> dict[str, Any]:
  """Size plus what changes when the file does: mtime locally, etag and generation on GCS."""
  if not is_gcs(path):
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
  info = filesystem(path).info(path)
  return {"size": int(info.get("size", 0)), "etag": info.get("etag"), "generation": info.get("generation")}


def check_writable(directory: str) -> None:
  """Fails early, in one line, when nothing can be written under `directory`."""
  probe = join(directory, f".ckptflow-probe-{os.getpid()}")
  try:
    write_bytes(probe, b"")
    remove_tree(probe)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{directory}: not writable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def remove_tree(path: str) -> None:
  """Deletes a file or everything under a directory/prefix; missing is fine."""
  if is_gcs(path):
    if not path[len(_GCS_PREFIX):].partition("/")[2].strip("/"):
      raise ConversionError(f"{path}: refusing to delete a whole bucket")
    try:
      filesystem(path).rm(path.rstrip("/"), recursive=True)
    except FileNotFoundError:
      pass
    return
  if os.path.abspath(path) == os.path.abspath(os.sep):
    raise ConversionError(f"{path}: refusing to delete the filesystem root")
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def list_names(path: str) -> list[str]:
  """Sorted base names directly under a directory or prefix; [] if it is missing or a file."""
  if not is_gcs(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  fs = filesystem(path)
  own = path[len(_GCS_PREFIX):].rstrip("/")
  try:
    entries = fs.ls(path, detail=False)
  except FileNotFoundError:
    return []
  names = set()
  for entry in entries:
    entry = entry.rstrip("/")
    if entry != own:
      names.add(entry.rsplit("/", 1)[-1])
  return sorted(names)


def find(path: str) -> list[str]:
  """Every file below a directory or prefix, as paths relative to it; [] if it is missing."""
  base = path.rstrip("/")
  if not is_gcs(path):
    if not os.path.isdir(base):
      return []
    return sorted(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/")
                  for root, _, files in os.walk(base) for f in files)
  fs = filesystem(path)
  own = base[len(_GCS_PREFIX):]
  try:
    found = fs.find(base)
  except FileNotFoundError:
    return []
  return sorted(f[len(own):].lstrip("/") for f in found if f.startswith(own + "/"))


def stored_bytes(path: str, names: list[str] | None = None) -> int:
  """The bytes the files below `path` take in storage (all of them, or only `names` directly in it)."""
  relative = find(path) if names is None else [n for n in names if exists(join(path, n))]
  if not is_gcs(path):
    return sum(os.path.getsize(os.path.join(path, r)) for r in relative)
  fs = filesystem(path)
  return sum(int(fs.size(join(path, r))) for r in relative)


def kvstore_spec(path: str) -> dict[str, Any]:
  """A tensorstore kvstore for the directory `path` (also valid as an OCDBT `base`)."""
  if is_gcs(path):
    bucket, _, key = path[len(_GCS_PREFIX):].partition("/")
    if not bucket:
      raise ConversionError(f"{path}: no bucket name")
    key = key.strip("/")
    return {"driver": "gcs", "bucket": bucket, "path": key + "/" if key else ""}
  return {"driver": "file", "path": os.path.abspath(path) + "/"}
