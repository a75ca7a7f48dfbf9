"""Thin Beam steps of MaxText -> HF: write each safetensors shard, then the index and config last.

For an hf:// destination a shard is written to a local temporary file on the worker, uploaded in
its own commit and deleted, so a worker's disk holds one shard at most; the index, tokenizer files
and config.json are uploaded together in the last commit, after the barrier.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator, Sequence

import apache_beam as beam
import numpy as np

from transforms.errors import ConversionError
from transforms import disk_full, hub_io, hub_upload, leftovers, lora, manifest, stopping, storage, writeback, writer_lock
from transforms.convert import maxtext_to_hf
from transforms.dofns import TensorCountingFn
from transforms.orbax_reader import CheckpointReader
from transforms.quantized import quantize_fp8_blocks
from transforms.safetensors_io import DTYPES, HF_FILE_METADATA, INDEX_FILE, SafetensorsWriter
from transforms.tensor_ops import contiguous

PREFETCH_BYTES = 256 * 2**20
# Files next to the weights that a model directory needs and we carry over from --hf_model_path.
AUX_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
             "chat_template.json", "preprocessor_config.json")


class CheckpointReadingFn(TensorCountingFn):
  """A step that reads a MaxText checkpoint: one reader (and its open arrays) per DoFn instance."""

  def __init__(self, items: str, family: Any, sizes: dict[str, Any], progress_path: str | None = None,
               hub: hub_io.HubAccess | None = None):
    super().__init__(family, sizes, progress_path, hub)
    self.items = items

  def setup(self) -> None:
    super().setup()
    self.reader = CheckpointReader(self.items)


class WriteShardFn(CheckpointReadingFn):
  """Streams one shard: header first, then each tensor read from Orbax, converted and appended."""

  def process(self, shard) -> Iterator[tuple[str, int, tuple[tuple[str, int], ...]]]:
    """Yields (file, tensors written, each tensor's CRC-32C as written)."""
    start = time.monotonic()
    checksums: dict[str, int] = {}
    name = shard.file.rsplit("/", 1)[-1]
    if hub_io.is_hub(shard.file):
      repo = hub_upload.repo_of(_directory(shard.file))
      with leftovers.scratch_directory() as local:
        disk_full.check_scratch(local, shard.size, f"shard {name}")
        with disk_full.writing(local, f"shard {name} (local copy for {shard.file})"):
          self._write(shard, os.path.join(local, name), checksums)
        hub_upload.commit(repo, [(name, os.path.join(local, name))], f"Upload {name} (ckptflow)")
    else:
      with disk_full.writing(_directory(shard.file), f"shard {name}"):
        self._write(shard, shard.file, checksums)
    self.msec.update(int((time.monotonic() - start) * 1000))
    yield shard.file, len(shard.tensors), tuple(checksums.items())

  def _write(self, shard, path: str, checksums: dict[str, int]) -> None:
    entries = [o for t in shard.tensors for o in t.outputs]
    with SafetensorsWriter(path, entries, HF_FILE_METADATA) as writer:
      scales: list[np.ndarray] = []
      for task, rows, read, last in hf_blocks(self.reader, shard.tensors, self.param_of, self.sizes):
        if task.fp8_block:  # the scales follow the whole weight in the file: held (they are small) until then
          rows, block_scales = quantize_fp8_blocks(rows, task.fp8_block)
          scales.append(block_scales)
        pending = [(task.name, rows)]
        if last and scales:
          pending.append((task.outputs[1][0], np.concatenate(scales)))
          scales = []
        for name, value in pending:
          stopping.check()
          writer.write(name, value)
          checksums[name] = manifest.crc32c(value, checksums.get(name, 0))
        if last:
          self.tensor_done(read, task.nbytes)


def _directory(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[0]


def hf_blocks(reader: CheckpointReader, tasks: Sequence, param_of: Callable[[int], Any],
              sizes: dict[str, Any]) -> Iterator[tuple[Any, np.ndarray, int, bool]]:
  """(task, the next rows of its HF tensor, bytes read for the tensor so far, whether they are its last)
  in file order: whole tensors, or a split tensor's row blocks one after another.

  A small next piece's read (tensorstore decompresses on its own threads) overlaps this one's
  conversion; a large one waits, so a worker holds at most 2 x the largest piece + PREFETCH_BYTES.
  """
  pieces = []
  for task in tasks:
    blocks = task.blocks
    pieces += [(task, block, i == len(blocks) - 1) for i, block in enumerate(blocks)]

  def start(piece):
    task, block, _ = piece
    return [reader.read_slice(s.array, s.index, s.window(block)) for s in task.sources]

  pending = None
  read = 0
  for i, piece in enumerate(pieces):
    task, block, last = piece
    values = [reader.result(f, s.array, s.index) for f, s in zip(pending or start(piece), task.sources)]
    following = pieces[i + 1] if i + 1 < len(pieces) else None
    pending = start(following) if following and following[0].block_nbytes(following[1]) <= PREFETCH_BYTES else None
    read += sum(v.nbytes for v in values)
    params = [param_of(s.param) for s in task.sources]
    wide = maxtext_to_hf(values, params, sizes if block is None else block.with_sizes(sizes))
    if task.lora is not None:
      wide = lora.merged_rows(wide, task.lora, None if block is None else block.rows)
    rows = contiguous(wide, DTYPES[task.value_dtype])
    del wide
    del values
    yield task, rows, read, last
    if last:
      read = 0


def hf_tensors(reader: CheckpointReader, tasks: Sequence, param_of: Callable[[int], Any],
               sizes: dict[str, Any]) -> Iterator[tuple[Any, np.ndarray, int]]:
  """(task, whole HF tensor, bytes read) for each task: for callers that need whole tensors anyway."""
  parts: list[np.ndarray] = []
  for task, rows, read, last in hf_blocks(reader, tasks, param_of, sizes):
    parts.append(rows)
    if last:
      yield task, parts[0] if len(parts) == 1 else np.concatenate(parts), read
      parts = []


class CountTensors(beam.CombineFn):
  """The barrier: how many tensors all shard writers wrote, and their CRC-32Cs."""

  def create_accumulator(self) -> tuple[int, dict[str, int]]:
    return 0, {}

  def add_input(self, acc, item: tuple[str, int, tuple[tuple[str, int], ...]]):
    return acc[0] + item[1], {**acc[1], **dict(item[2])}

  def merge_accumulators(self, accs):
    count, crcs = 0, {}
    for n, c in accs:
      count, crcs = count + n, {**crcs, **c}
    return count, crcs

  def extract_output(self, acc):
    return acc


class FinalizeFn(beam.DoFn):
  """After every shard exists: the index, the tokenizer files, and config.json (or `config_file`), which goes last.

  `carried` files (by name, as text) are written as given instead of copied from `hf_model_path`."""

  def __init__(self, output: str, expected_tensors: int, index: dict[str, Any] | None, config: dict[str, Any],
               hf_model_path: str | None, provenance: dict[str, Any] | None = None,
               hub: hub_io.HubAccess | None = None, lock: writer_lock.Held | None = None,
               config_file: str = "config.json", carried: dict[str, str] | None = None):
    self.output = output
    self.carried = dict(carried or {})
    self.lock = lock
    self.config_file = config_file
    self.expected_tensors = expected_tensors
    self.index = index
    self.config = config
    self.hf_model_path = hf_model_path
    self.provenance = provenance
    self.hub = hub

  def setup(self) -> None:
    if self.hub is not None:
      hub_io.configure(self.hub)

  def process(self, collected: tuple[int, dict[str, int]]) -> Iterator[str]:
    count, checksums = collected
    if count != self.expected_tensors:
      raise ConversionError(f"{self.output}: {count} of {self.expected_tensors} tensors were written; "
                            "not writing config.json")
    if not hub_io.is_hub(self.output):
      if not storage.is_gcs(self.output):  # shards are fsynced; their renames reach the disk before config.json
        writeback.sync_file_system(self.output)
      with disk_full.writing(self.output, "the index, tokenizer files and config.json"):
        self._write(self.output, checksums)
      writer_lock.release(self.lock)  # config.json is written: the destination is free
      yield self.output
      return
    with leftovers.scratch_directory() as local:
      with disk_full.writing(local, f"the index, tokenizer files and config.json for {self.output}"):
        names = self._write(local, checksums)
      hub_upload.commit(hub_upload.repo_of(self.output), [(n, os.path.join(local, n)) for n in names],
                        "Upload the index, tokenizer files and config.json (ckptflow)")
    yield self.output

  def _write(self, output: str, checksums: dict[str, int]) -> list[str]:
    """The index, tokenizer files, our manifest and config.json (last) into `output`; returns their
    names in order."""
    names = []
    if self.index is not None:
      storage.write_text(storage.join(output, INDEX_FILE), json.dumps(self.index, indent=2, sort_keys=True) + "\n")
      names.append(INDEX_FILE)
    for name in AUX_FILES:
      if name in self.carried:
        storage.write_text(storage.join(output, name), self.carried[name])
        names.append(name)
        continue
      source = storage.join(self.hf_model_path, name) if self.hf_model_path else None
      if source and storage.exists(source):
        storage.write_bytes(storage.join(output, name), storage.read_bytes(source))
        names.append(name)
    if self.provenance is not None:
      manifest.write(output, self.provenance, checksums)
      names.append(manifest.MANIFEST)
    storage.write_text(storage.join(output, self.config_file), json.dumps(self.config, indent=2, sort_keys=True) + "\n")
    return names + [self.config_file]
