"""Thin Beam steps of MaxText -> HF: write each safetensors shard, then the index and config last."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator, Sequence

import apache_beam as beam
import numpy as np

from pipeline.errors import ConversionError
from transforms import storage
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

  def __init__(self, items: str, family: str, sizes: dict[str, Any], progress_path: str | None = None):
    super().__init__(family, sizes, progress_path)
    self.items = items

  def setup(self) -> None:
    super().setup()
    self.reader = CheckpointReader(self.items)


class WriteShardFn(CheckpointReadingFn):
  """Streams one shard: header first, then each tensor read from Orbax, converted and appended."""

  def process(self, shard) -> Iterator[tuple[str, int]]:
    start = time.monotonic()
    entries = [o for t in shard.tensors for o in t.outputs]
    with SafetensorsWriter(shard.file, entries, HF_FILE_METADATA) as writer:
      for task, tensor, read in hf_tensors(self.reader, shard.tensors, self.param_of, self.sizes):
        outputs = quantize_fp8_blocks(tensor, task.block) if task.block else (tensor,)
        for (name, _, _), value in zip(task.outputs, outputs):
          writer.write(name, value)
        self.tensor_done(read, sum(v.nbytes for v in outputs))
    self.msec.update(int((time.monotonic() - start) * 1000))
    yield shard.file, len(shard.tensors)


def hf_tensors(reader: CheckpointReader, tasks: Sequence, param_of: Callable[[int], Any],
               sizes: dict[str, Any]) -> Iterator[tuple[Any, np.ndarray, int]]:
  """(task, HF tensor, bytes read) for each task in order.

  A small next tensor's read (tensorstore decompresses on its own threads) overlaps this one's
  conversion; a large one waits, so a worker holds at most 2 x the largest tensor + PREFETCH_BYTES.
  """
  def start(task):
    return [reader.read_slice(s.array, s.index) for s in task.sources]

  pending = None
  for i, task in enumerate(tasks):
    values = [_result(f, reader, s) for f, s in zip(pending or start(task), task.sources)]
    pending = start(tasks[i + 1]) if i + 1 < len(tasks) and tasks[i + 1].nbytes <= PREFETCH_BYTES else None
    read = sum(v.nbytes for v in values)
    params = [param_of(s.param) for s in task.sources]
    tensor = contiguous(maxtext_to_hf(values, params, sizes), DTYPES[task.value_dtype])
    del values
    yield task, tensor, read


def _result(future, reader: CheckpointReader, source) -> np.ndarray:
  try:
    return np.asarray(future.result())
  except ValueError as e:  # tensorstore: a chunk that should be there is not (NOT_FOUND), or is corrupt
    raise ConversionError(f"{reader.items}: cannot read {source.array} {list(source.index)}: "
                          f"{str(e).splitlines()[0][:300]}; the checkpoint is incomplete or damaged") from None


class CountTensors(beam.CombineFn):
  """The barrier: how many tensors all shard writers wrote."""

  def create_accumulator(self) -> int:
    return 0

  def add_input(self, acc: int, item: tuple[str, int]) -> int:
    return acc + item[1]

  def merge_accumulators(self, accs) -> int:
    return sum(accs)

  def extract_output(self, acc: int) -> int:
    return acc


class FinalizeFn(beam.DoFn):
  """After every shard exists: the index, the tokenizer files, and config.json, which goes last."""

  def __init__(self, output: str, expected_tensors: int, index: dict[str, Any] | None, config: dict[str, Any],
               hf_model_path: str | None):
    self.output = output
    self.expected_tensors = expected_tensors
    self.index = index
    self.config = config
    self.hf_model_path = hf_model_path

  def process(self, count: int) -> Iterator[str]:
    if count != self.expected_tensors:
      raise ConversionError(f"{self.output}: {count} of {self.expected_tensors} tensors were written; "
                            "not writing config.json")
    if self.index is not None:
      storage.write_text(storage.join(self.output, INDEX_FILE), json.dumps(self.index, indent=2, sort_keys=True) + "\n")
    if self.hf_model_path:
      for name in AUX_FILES:
        source = storage.join(self.hf_model_path, name)
        if storage.exists(source):
          storage.write_bytes(storage.join(self.output, name), storage.read_bytes(source))
    storage.write_text(storage.join(self.output, "config.json"), json.dumps(self.config, indent=2, sort_keys=True) + "\n")
    yield self.output
