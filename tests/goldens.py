"""The golden checkpoints the tests use (read-only; tests copy what they convert) and Orbax restores.

They live in tests/data/ (copied from ../shared/, where new ones arrive), so the suite passes in a
fresh clone with nothing beside it. CKPTFLOW_GOLDENS=<dir laid out like tests/data/goldens> points
the tests at another set (e.g. ../shared/goldens with hidden seeds); the newer families and the
training checkpoints are read from its sibling folders goldens_newer/ and goldens_train/ when it has them.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
GOLDENS = os.environ.get("CKPTFLOW_GOLDENS", os.path.join(DATA, "goldens"))
GOLDENS_NEWER = os.path.join(os.path.dirname(GOLDENS), "goldens_newer")
GOLDENS_TRAIN = os.path.join(os.path.dirname(GOLDENS), "goldens_train")
MAKE_MODEL = os.path.join(REPO, "bench", "make_model.py")
# Families whose goldens run through every generic test (others have a tests/test_family_*.py).
FAMILIES = ("llama3.1", "qwen3", "qwen2.5", "qwen3-moe", "mixtral")


def path(family: str, *parts: str) -> str:
  return os.path.join(GOLDENS, family, *parts)


def copy_hf(family: str, dest: str) -> str:
  """A writable copy of the family's tiny HF checkpoint."""
  shutil.copytree(path(family, "hf"), dest)
  for root, dirs, files in os.walk(dest):
    for name in dirs + files:
      os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
  return dest


def tree(family: str, layout: str) -> dict[str, dict]:
  with open(path(family, f"tree_{layout}.json")) as f:
    return json.load(f)


def items(family: str, layout: str) -> str:
  return path(family, f"maxtext_{layout}", "0", "items")


def restore(items_path: str) -> dict[str, np.ndarray]:
  """Restores a checkpoint with Orbax itself: {'params/params/...': ndarray, 'step': ndarray}."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  restored = ocp.PyTreeCheckpointer().restore(items_path)
  flat: dict[str, np.ndarray] = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, prefix + (str(k),))
    else:
      flat["/".join(prefix)] = np.asarray(node)
  walk(restored, ())
  return flat


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
  return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def assert_same_checkpoint(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
  assert sorted(ours) == sorted(theirs)
  differ = [k for k in theirs if not same_bits(ours[k], theirs[k])]
  assert not differ, f"{len(differ)} arrays differ, e.g. {differ[:3]}"
