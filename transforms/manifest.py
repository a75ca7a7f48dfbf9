"""ckptflow_manifest.json: what an output was made from, so a later run can prove it (or skip it).

Both directions write one beside their output, before the output's own commit marker (Orbax's
commit_success.txt, HF's config.json): the tool version, the conversion's options, a fingerprint of
every source file as it was when planned, and a CRC-32C per tensor (source tensors as read going to
MaxText, output tensors as written going to HF), gathered through the pipeline's barrier.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
from typing import Any, Iterable

import google_crc32c
import numpy as np

from transforms import hub_io, orbax_layout, storage
from transforms.errors import ConversionError

MANIFEST = "ckptflow_manifest.json"


def tool_version() -> str:
  try:
    return importlib.metadata.version("ckptflow")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def build(direction: str, family: str, options: dict[str, Any], source_files: Iterable[str],
          tensors: Iterable[str], source: str | None = None) -> dict[str, Any]:
  """The manifest before any work: sources are fingerprinted now, so a file changed mid-run shows.

  `source` is the model read (a Hub source as hf://org/repo@<commit>); a token or credentials in a
  URL never reach the file (hub_io.redact)."""
  manifest = {"tool": "ckptflow", "version": tool_version(), "direction": direction, "family": family,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "options": options, "source": source,
              "sources": {f: storage.fingerprint(f) for f in sorted(set(source_files))},
              "tensors": sorted(set(tensors))}
  return json.loads(hub_io.redact(json.dumps(manifest)))


# Marks a checksum of a source slice's stored chunk bytes (copied without decoding), not of its values:
# a CRC-32C (Castagnoli, as GCS and zarr3's shard index use), over the chunks in key order.
STORED = "#stored"


def checksum_key(name: str, rows: tuple[int, int] | None, stored: bool = False) -> str:
  """A tensor read whole is checksummed whole; a split one per row block, `name@start:stop`; a slice
  copied as stored (transforms/chunk_copy.py) over its chunks' bytes (CRC-32C), `...#stored`."""
  return (name if rows is None else f"{name}@{rows[0]}:{rows[1]}") + (STORED if stored else "")


def crc32c(value: np.ndarray, previous: int = 0) -> int:
  """The CRC-32C of an array's bytes in C order, continuing `previous` (a tensor written in row blocks).

  CRC-32C rather than zlib's CRC-32: the CPU computes it (12 GB/s on the development VM, against
  2.1 GB/s), and checksumming every byte of a model is otherwise a second of CPU per 2 GB."""
  return google_crc32c.extend(previous, np.ascontiguousarray(value).reshape(-1).view(np.uint8))


def write(directory: str, manifest: dict[str, Any], checksums: dict[str, int]) -> None:
  """Adds each tensor's CRC-32C of its values (`crc32c`; for a slice copied as stored, of its stored chunk
  bytes: `crc32c_stored`), or for a tensor read in row blocks each block's (by its rows: `crc32c_by_rows`,
  `crc32c_stored_by_rows`); null for tensors an interrupted run wrote before --resume."""
  whole: dict[str, dict[str, int]] = {}
  blocks: dict[str, dict[str, dict[str, int]]] = {}
  for key, crc in checksums.items():
    field = "crc32c_stored" if key.endswith(STORED) else "crc32c"
    key = key[:-len(STORED)] if key.endswith(STORED) else key
    if "@" in key:
      name, rows = key.rsplit("@", 1)
      blocks.setdefault(name, {}).setdefault(field + "_by_rows", {})[rows] = crc
    else:
      whole[key] = {field: crc}
  tensors = {name: {field: dict(sorted(rows.items(), key=lambda kv: int(kv[0].split(":")[0])))
                    for field, rows in blocks[name].items()}
             if name in blocks else whole.get(name, {"crc32c": None}) for name in manifest.get("tensors", ())}
  storage.write_text(storage.join(directory, MANIFEST),
                     json.dumps({**manifest, "tensors": tensors}, indent=1, sort_keys=True))


# The HF files that describe a model, carried in a MaxText checkpoint's manifest (as their text, so the
# way back writes them byte for byte) so that MaxText -> HF needs no --hf_model_path.
MODEL_FILES = ("config.json", "generation_config.json")


def model_files(model_dir: str) -> dict[str, str]:
  """The texts of `model_dir`'s MODEL_FILES that exist (config.json always does: the plan read it)."""
  found = {}
  for name in MODEL_FILES:
    path = storage.join(model_dir, name)
    if name == "config.json" or storage.exists(path):
      found[name] = storage.read_text(path)
  return found


def with_model(manifest: dict[str, Any], files: dict[str, str], tokenizer_from: str | None) -> dict[str, Any]:
  """`manifest` carrying the HF model's files and where its tokenizer files are (the model read)."""
  return json.loads(hub_io.redact(json.dumps({**manifest, "hf_files": dict(files),
                                              "tokenizer_from": tokenizer_from})))


@dataclasses.dataclass(frozen=True)
class RecordedModel:
  """What a checkpoint's manifest says about the HF model it was made from."""
  path: str  # the manifest
  files: dict[str, str]
  tokenizer_from: str | None

  @property
  def config(self) -> dict[str, Any]:
    try:
      config = json.loads(self.files["config.json"])
    except (KeyError, json.JSONDecodeError):
      config = None
    if not isinstance(config, dict):
      raise ConversionError(f"{self.path}: its hf_files hold no valid config.json; pass --hf_model_path=DIR")
    return config

  @property
  def where(self) -> str:
    return f"the config.json recorded in {self.path}"


def recorded_model(items: str) -> RecordedModel | None:
  """The HF model recorded beside the checkpoint `items` (<step>/ckptflow_manifest.json), or None."""
  step_dir = storage.parent(items)
  found = read(step_dir)
  if found is None or not isinstance(found.get("hf_files"), dict) or "config.json" not in found["hf_files"]:
    return None
  return RecordedModel(storage.join(step_dir, MANIFEST), found["hf_files"], found.get("tokenizer_from"))


def read(directory: str) -> dict[str, Any] | None:
  """The manifest in `directory`, or None when there is none (or it is not ours)."""
  path = storage.join(directory, MANIFEST)
  if not storage.exists(path):
    return None
  try:
    manifest = json.loads(storage.read_text(path))
  except json.JSONDecodeError:
    return None
  return manifest if isinstance(manifest, dict) and manifest.get("tool") == "ckptflow" else None


def orbax_source_files(items: str) -> list[str]:
  """The files of a committed Orbax checkpoint that change whenever it is saved again: its metadata,
  commit markers and OCDBT root (every chunk write goes through it), and our manifest if present."""
  step_dir = storage.parent(items)
  candidates = [storage.join(items, name) for name in (orbax_layout.METADATA, orbax_layout.COMMIT_MARKER,
                                                       orbax_layout.OCDBT_MANIFEST)]
  candidates += [storage.join(step_dir, name) for name in (orbax_layout.CHECKPOINT_METADATA,
                                                          orbax_layout.COMMIT_MARKER, MANIFEST)]
  return [path for path in candidates if storage.exists(path)]
