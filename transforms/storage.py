"""Local paths, gs:// URLs and hf:// Hub repos behind one small API, so no other module branches on the scheme.

Local and gs:// paths go to transforms/files.py. hf:// paths are read through transforms/hub_io.py
(ranged reads over HfFileSystem) and never written here: uploads to the Hub go through
transforms/hub_upload.py.
"""
from __future__ import annotations

from typing import Any

from transforms import files, hub_io
from transforms.errors import ConversionError
from transforms.files import filesystem, find, is_gcs, join, kvstore_spec, parent

is_hub = hub_io.is_hub


def _read_only(path: str) -> ConversionError:
  return ConversionError(f"{path}: Hub repos are written by uploading finished files, not in place")


def exists(path: str) -> bool:
  return hub_io.exists(path) if is_hub(path) else files.exists(path)


def size(path: str) -> int:
  return hub_io.size(path) if is_hub(path) else files.size(path)


def read_bytes(path: str, start: int | None = None, end: int | None = None) -> bytes:
  """One ranged read of [start, end); fewer bytes come back if the file is shorter."""
  return hub_io.read_bytes(path, start, end) if is_hub(path) else files.read_bytes(path, start, end)


def read_range(path: str, start: int, end: int) -> memoryview | bytes:
  """Bytes [start, end) of a tensor's extent: mapped from a local file, else one ranged read."""
  return hub_io.read_bytes(path, start, end) if is_hub(path) else files.read_range(path, start, end)


def read_text(path: str) -> str:
  if not is_hub(path):
    return files.read_text(path)
  try:
    return read_bytes(path).decode("utf-8")
  except UnicodeDecodeError:
    raise ConversionError(f"{path}: not UTF-8 text") from None


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole object at once; a local reader never sees a partial file."""
  if is_hub(path):
    raise _read_only(path)
  files.write_bytes(path, data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def fingerprint(path: str) -> dict[str, Any]:
  """Size plus what changes when the file does: mtime locally, etag and generation on GCS, the
  commit and content hash on the Hub."""
  return hub_io.fingerprint(path) if is_hub(path) else files.fingerprint(path)


def check_writable(directory: str) -> None:
  """Fails early, in one line, when nothing can be written under `directory`."""
  if is_hub(directory):
    raise _read_only(directory)
  files.check_writable(directory)


def remove_tree(path: str) -> None:
  """Deletes a file or everything under a directory/prefix; missing is fine."""
  if is_hub(path):
    raise _read_only(path)
  files.remove_tree(path)


def is_local(path: str) -> bool:
  """A path on this machine's file system: neither gs:// nor hf://."""
  return not (is_gcs(path) or is_hub(path))


def stored_bytes(path: str, names: list[str] | None = None) -> int | None:
  """The bytes the files below `path` (or only `names` in it) take in storage; None on the Hub."""
  return None if is_hub(path) else files.stored_bytes(path, names)


def list_names(path: str) -> list[str]:
  """Sorted base names directly under a directory or prefix; [] if it is missing or a file."""
  return hub_io.list_names(path) if is_hub(path) else files.list_names(path)


__all__ = ["check_writable", "exists", "filesystem", "find", "fingerprint", "is_gcs", "is_hub", "is_local", "join", "kvstore_spec",
           "list_names", "parent", "read_bytes", "read_text", "remove_tree", "size", "stored_bytes", "write_bytes",
           "write_text"]
