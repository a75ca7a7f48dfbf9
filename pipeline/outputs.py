"""Each direction's output as the destination rules see it (pipeline/destination.py): the bytes it
needs on local disks, how much of it is stored, its temporary files, and what a run wrote there."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Sequence

from pipeline.destination import Need, local_bytes, with_margin
from pipeline.plan_hf import INDEX_FILE, HfPlan
from transforms import hub_io, hub_upload, leftovers, manifest, orbax_layout, orbax_writer, storage
from transforms.orbax_writer import CheckpointTarget
from transforms.shard_dofns import AUX_FILES

# Without OCDBT every chunk is a file of its own: a file system block of slack each.
FILE_SLACK_BYTES = 4096
# Index, config.json and the manifest of an HF output: a few KB, plus about 100 bytes a tensor.
HF_METADATA_BYTES = 4 * 2**20


@dataclasses.dataclass
class MaxTextOutput:
  """An Orbax checkpoint step being written: `slices` are the plan's (array, index, window)."""
  target: CheckpointTarget
  slices: Sequence[tuple[Any, Any, Any]]
  fresh: bool = True
  unit: str = "slices"

  @property
  def where(self) -> str:
    return self.target.items

  def stored(self) -> tuple[int, int]:
    if not storage.exists(self.target.items):
      return 0, len(self.slices)
    return sum(orbax_writer.finished(self.target, self.slices)), len(self.slices)

  def sweep(self) -> None:
    """Temporary files, and writer databases that never committed anything (a writer killed before
    its first slice): nothing refers to them and nothing ever will."""
    leftovers.sweep(storage.parent(self.target.step_dir), ours=lambda name: False)  # only probes and lock leftovers
    leftovers.sweep(self.target.step_dir, tensorstore=True, recursive=True)
    for process in orbax_writer.writer_ids(self.target):
      writer = storage.join(self.target.items, orbax_layout.PROCESS_PREFIX + process)
      if not storage.exists(storage.join(writer, orbax_layout.OCDBT_MANIFEST)):
        storage.remove_tree(writer)

  def remove_written(self) -> None:
    storage.remove_tree(self.target.step_dir)


def maxtext_needs(base: str, tasks: Sequence, target: CheckpointTarget, reclaimed: int = 0) -> list[Need]:
  """The uncompressed bytes of the slices still to write, plus a margin. zstd makes bf16 weights about
  0.78 of that, but what it makes of other data is only known after compressing it, and incompressible
  chunks are stored as they are: so the uncompressed size, which is never exceeded by more than the
  margin, is what must fit."""
  nbytes = with_margin(sum(t.written_nbytes for t in tasks))
  if not target.use_ocdbt:
    nbytes += FILE_SLACK_BYTES * sum(len(orbax_layout.chunk_keys(t.array, t.index, target.use_zarr3, t.window))
                                     for t in tasks)
  return [Need(base, nbytes, "use another base_output_directory", reclaimed)]


def hub_cache_needs(cache_dir: str | None, source: str, source_bytes: int) -> list[Need]:
  """--hf_cache_dir keeps every range read from the Hub: what is not cached yet for this commit."""
  if not cache_dir or not hub_io.is_hub(source):
    return []
  where = hub_io.split(source)
  cached = local_bytes(storage.join(cache_dir, where.repo, where.revision))
  return [Need(cache_dir, max(0, source_bytes - cached), "use another --hf_cache_dir, or none")]


@dataclasses.dataclass
class HfOutput:
  """A safetensors model directory being written (local, gs:// or hf://)."""
  plan: HfPlan
  output: str
  fresh: bool = True
  unit: str = "shards"

  @property
  def where(self) -> str:
    return self.output

  def names(self) -> set[str]:
    return {s.file.rsplit("/", 1)[-1] for s in self.plan.shards} | {INDEX_FILE, "config.json", self.plan.config_file,
                                                                    manifest.MANIFEST, *AUX_FILES}

  def stored(self) -> tuple[int, int]:
    done = sum(1 for s in self.plan.shards if storage.exists(s.file) and storage.size(s.file) == s.size)
    return done, len(self.plan.shards)

  def sweep(self) -> None:
    if hub_io.is_hub(self.output):
      leftovers.sweep_scratch()  # uploads are whole files; what a killed worker leaves is its local copy
      return
    ours = self.names()
    leftovers.sweep(self.output, ours=ours.__contains__)

  def remove_written(self) -> None:
    present = [n for n in storage.list_names(self.output) if n in self.names()]
    if hub_io.is_hub(self.output) and present:
      hub_upload.commit(hub_upload.repo_of(self.output), [], "Remove an incomplete ckptflow upload", deletions=present)
      return
    for name in present:
      storage.remove_tree(storage.join(self.output, name))


def hf_needs(output: str, shards: Sequence, aux_bytes: int, reclaimed: int, scratch_writers: int) -> list[Need]:
  """Shards are written whole, at their planned size; for an hf:// destination each of the
  `scratch_writers` local workers holds one shard in its temporary directory at a time."""
  metadata = HF_METADATA_BYTES + 100 * sum(len(s.tensors) for s in shards)
  needs = [Need(output, sum(s.size for s in shards) + aux_bytes + metadata, "use another base_output_directory",
                reclaimed)]
  if hub_io.is_hub(output) and scratch_writers and shards:
    largest = sorted((s.size for s in shards), reverse=True)[:scratch_writers]
    needs.append(Need(tempfile.gettempdir(), sum(largest) + metadata,
                      "the shards bound for the Hub are written there first: set TMPDIR to a larger disk"))
  return needs


def aux_bytes(hf_model_path: str | None) -> int:
  """The tokenizer and generation files carried over from --hf_model_path."""
  if not hf_model_path:
    return 0
  total = 0
  for name in AUX_FILES:
    path = storage.join(hf_model_path, name)
    if storage.exists(path):
      total += storage.size(path)
  return total


def existing_bytes(output: str, names: set[str]) -> int:
  """Local bytes of the files of ours already in `output` (what --overwrite removes first)."""
  if not storage.is_local(output) or not os.path.isdir(output):
    return 0
  return sum(local_bytes(os.path.join(output, n)) for n in os.listdir(output)
             if n in names or n.endswith(".safetensors"))
