"""Tensors above --max_element_size are converted in row blocks: same checkpoint, bounded elements."""
import os

import pytest

from pipeline.planner import plan_to_maxtext
from tests import goldens
from tests.test_to_maxtext import convert

ALL_GOLDENS = sorted(d for d in os.listdir(goldens.GOLDENS) if os.path.isdir(os.path.join(goldens.GOLDENS, d, "hf")))
TINY = 8192


def multimodal(family):
  return ["--use_multimodal=true"] if family == "gemma3-mm" else []


@pytest.mark.parametrize("family", ALL_GOLDENS)
def test_split_conversion_is_bit_identical_to_maxtext(tmp_path, family):
  plan, items, totals = convert(goldens.path(family, "hf"), tmp_path, f"--max_element_size={TINY}",
                                *multimodal(family))
  whole = plan_to_maxtext(goldens.path(family, "hf"), use_multimodal=bool(multimodal(family)))
  assert len(plan.tasks) > len(whole.tasks) and totals["read-bytes"] == whole.source_bytes
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items(family, "scan")))


def test_blocks_bound_every_element_that_can_be_split():
  plan = plan_to_maxtext(goldens.path("llama3.1", "hf"), split_bytes=TINY)
  split = [t for t in plan.tasks if t.block is not None]
  assert {t.array.path.rsplit("/", 2)[-2] for t in split} >= {"token_embedder", "query", "wi_0", "out"}
  for task in split:
    assert task.nbytes <= TINY and task.written_nbytes <= TINY, task.array.path
    # Blocks start on chunk boundaries along their axis, so no two writers share a chunk.
    assert task.window[1] % task.array.chunks[task.block_axis] == 0
  whole = [t for t in plan.tasks if t.block is None]
  assert all(t.nbytes <= TINY for t in whole)


@pytest.mark.parametrize("vocab", [500, 600])
def test_padded_and_truncated_embeddings_split_into_blocks(tmp_path, vocab):
  """MaxText's vocabulary padded (600 > 512 rows) or truncated (500): rows past HF's come as zero
  blocks, rows past MaxText's are not written, and the result equals the unsplit conversion."""
  hf = goldens.path("gemma2", "hf")
  _, whole, _ = convert(hf, tmp_path / "whole", f"--vocab_size={vocab}")
  plan, split, _ = convert(hf, tmp_path / "split", f"--vocab_size={vocab}", f"--max_element_size={TINY}")
  embedding = [t for t in plan.tasks if t.array.path.endswith("token_embedder/embedding")]
  assert len(embedding) > 1 and embedding[-1].window[2] == vocab
  goldens.assert_same_checkpoint(goldens.restore(split), goldens.restore(whole))


@pytest.mark.parametrize("family", ["llama3.1", "gpt-oss", "gemma3"])
def test_maxtext_to_hf_in_row_blocks_writes_the_same_files(tmp_path, family):
  from tests.test_to_huggingface import to_hf  # pylint: disable=import-outside-toplevel
  items, hf = goldens.items(family, "scan"), goldens.path(family, "hf")
  plan, _ = to_hf(items, tmp_path / "split", f"--max_element_size={TINY}", hf_model_path=hf)
  assert any(t.split is not None and len(t.blocks) > 2 for s in plan.shards for t in s.tensors)
  to_hf(items, tmp_path / "whole", hf_model_path=hf)
  names = sorted(os.listdir(tmp_path / "whole"))
  assert names == sorted(os.listdir(tmp_path / "split"))
  for name in names:
    if name != "ckptflow_manifest.json":
      assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.parametrize("vocab", [500, 600])
def test_padded_and_truncated_embeddings_come_back_in_blocks(tmp_path, vocab):
  from tests.test_to_huggingface import tensors, to_hf  # pylint: disable=import-outside-toplevel
  hf = goldens.path("gemma3", "hf")
  _, items, _ = convert(hf, tmp_path / "mt", f"--vocab_size={vocab}")
  to_hf(items, tmp_path / "whole", f"--vocab_size={vocab}", hf_model_path=hf)
  to_hf(items, tmp_path / "split", f"--vocab_size={vocab}", f"--max_element_size={TINY}", hf_model_path=hf)
  whole, split = tensors(tmp_path / "whole"), tensors(tmp_path / "split")
  assert sorted(whole) == sorted(split)
  for name, value in whole.items():
    assert goldens.same_bits(split[name], value), name
