"""Where a local OCDBT database keeps each value, so that a chunk copy reads the data file itself.

Through tensorstore's Python API a stored chunk reaches us after three copies, each into fresh
memory: its read buffer, a std::string and the bytes object. On the development VM the fresh pages
cost more than the copying (docs/performance.md). One ranged read of the data file costs one copy.
The locations come from `tensorstore.ocdbt.dump`, tensorstore's own description of the database's
B+tree, walked once per process and source. Whatever that description does not say in the form
read here (another format version, a path that leaves the checkpoint) leaves every read to tensorstore.
"""
from __future__ import annotations

import functools
import os
import posixpath
from typing import Union

import tensorstore as ts

from transforms import storage
from transforms.errors import ConversionError
from transforms.orbax_layout import OCDBT_MANIFEST

# A value kept in a data file (path, offset, length), or small enough to sit in its B+tree node.
Stored = Union[tuple[str, int, int], bytes]


class StoredValues:
  """The latest version's values of one OCDBT database, by key."""

  def __init__(self, items: str, values: dict[bytes, Stored]):
    self.items = items
    self.values = values

  def read(self, key: bytes) -> bytes | None:
    """The key's stored bytes, exactly as tensorstore would return them; None for a key not stored."""
    return self._fetch(key, storage.read_bytes)

  def view(self, key: bytes | str) -> bytes | memoryview | None:
    """Like `read`, but a value in a data file is the page cache's own pages, mapped rather than copied."""
    return self._fetch(key.encode() if isinstance(key, str) else key, storage.read_range)

  def _fetch(self, key: bytes, read_file_range) -> bytes | memoryview | None:
    where = self.values.get(key)
    if where is None or isinstance(where, bytes):
      return where
    path, offset, length = where
    data = read_file_range(path, offset, offset + length)
    if len(data) != length:
      raise ConversionError(f"{path}: {len(data)} of the {length} bytes at offset {offset} that the OCDBT "
                            f"manifest of {self.items} names; the checkpoint is damaged or still being written")
    return data


def stored_values(items: str) -> StoredValues | None:
  """The index of a local OCDBT checkpoint's values, made once per version of its manifest; None when
  there is no local manifest or it is not described as expected. gs:// sources stay with tensorstore's
  reads (chunk_copy): those run concurrently, and the network, not the copies, is their cost."""
  try:
    manifest = os.stat(storage.join(items, OCDBT_MANIFEST))
  except OSError:
    return None
  return _index(items, (manifest.st_ino, manifest.st_mtime_ns, manifest.st_size))


@functools.lru_cache(maxsize=4)
def _index(items: str, manifest_version: tuple[int, int, int]) -> StoredValues | None:  # pylint: disable=unused-argument
  base = ts.KvStore.open(storage.kvstore_spec(items)).result()
  try:
    manifest = ts.ocdbt.dump(base).result()
    versions = manifest["versions"]
    if not versions:
      return StoredValues(items, {})
    latest = max(versions, key=lambda v: v["generation_number"])
    values: dict[bytes, Stored] = {}
    if "location" in latest["root"]:
      _walk(base, items, latest["root"]["location"], b"", values)
  except (KeyError, TypeError, ValueError):
    return None
  return StoredValues(items, values)


def _walk(base: ts.KvStore, items: str, location: str, prefix: bytes, values: dict[bytes, Stored]) -> None:
  """Adds the values under one B+tree node: an interior entry's keys continue its subtree's common
  prefix; a leaf's key continues the prefix of the nodes above it."""
  node = ts.ocdbt.dump(base, location).result()
  for entry in node["entries"]:
    if "location" in entry:
      _walk(base, items, entry["location"], prefix + entry.get("subtree_common_prefix", b""), values)
    elif "inline_value" in entry:
      values[prefix + entry["key"]] = bytes(entry["inline_value"])
    else:
      values[prefix + entry["key"]] = _data_file_range(items, entry["indirect_value"])


def _data_file_range(items: str, reference: str) -> tuple[str, int, int]:
  """'value:<base path>:<relative path>:<offset>:<length>' -> (the data file's path, offset, length)."""
  head, offset, length = reference.rsplit(":", 2)
  kind, base_path, relative = head.split(":", 2)
  path = posixpath.normpath(posixpath.join(base_path, relative))
  if kind != "value" or path.startswith(("..", "/")) or not relative:
    raise ValueError(reference)
  return storage.join(items, path), int(offset), int(length)
