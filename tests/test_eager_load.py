"""MaxText's eager-loading rule, for every family it applies to (Gemma3 always; any use_multimodal=true
conversion): each HF tensor is cast to the save dtype *before* any transform.

Checked on float32 variants of the goldens whose every value rounds back to the golden's bf16: by the
rule, converting one must give MaxText's own bf16 checkpoint bit for bit (a Gemma3 norm is
float32(bf16(w)) + 1, the Gemma 4 embedding bf16(float32(bf16(E)) * sqrt(hidden))), while transforming
the float32 values first (as a lazily loaded conversion does) gives other bits in exactly those arrays.
"""
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

from tests import goldens
from tests.test_to_huggingface import tensors
from tests.test_to_maxtext import convert as to_maxtext
from transforms.safetensors_io import write_safetensors

def _plus_one_in_float32(w):
  return (w.astype(np.float64) + 1).astype(np.float32)


def _times_sqrt48_in_bf16(w):
  return (w * np.float32(np.sqrt(48))).astype(ml_dtypes.bfloat16)


# (golden, its goldens folder, flags, layout, an HF tensor the cast changes, its array, that array without the cast)
CASES = [
    ("gemma3", goldens.GOLDENS, (), "scan", "language_model.model.norm.weight", "decoder/decoder_norm/scale",
     _plus_one_in_float32),
    ("gemma3-mm", goldens.GOLDENS, ("--use_multimodal=true",), "unscan", "language_model.model.norm.weight",
     "decoder/decoder_norm/scale", _plus_one_in_float32),
    ("gemma4-mm", goldens.GOLDENS_NEWER, ("--use_multimodal=true",), "scan", "model.language_model.embed_tokens.weight",
     "token_embedder/embedding", _times_sqrt48_in_bf16),
]


def float32_variant(hf: str, dest: str) -> dict[str, np.ndarray]:
  """The checkpoint in float32 with low bits set, w * (1 + u) for |u| < 2**-10: below half a bf16 step
  (2**-9 relative at least), so bf16(variant) is the golden's value exactly."""
  shutil.copytree(hf, dest)
  os.chmod(dest, 0o755)
  rng = np.random.default_rng(3)
  wide = {}
  for name, value in tensors(hf).items():
    x = value.astype(np.float32)
    wide[name] = (x * (1 + rng.uniform(-2**-10, 2**-10, x.shape))).astype(np.float32)
    assert goldens.same_bits(wide[name].astype(ml_dtypes.bfloat16), value), name
  os.chmod(os.path.join(dest, "model.safetensors"), 0o644)
  write_safetensors(os.path.join(dest, "model.safetensors"), wide)
  return wide


@pytest.mark.parametrize("golden,root,flags,layout,name,array,uncast", [pytest.param(*c, id=c[0]) for c in CASES])
def test_float32_variant_converts_to_maxtexts_own_bf16_checkpoint(tmp_path, golden, root, flags, layout, name, array,
                                                                  uncast):
  wide = float32_variant(os.path.join(root, golden, "hf"), str(tmp_path / "hf"))
  _, items, _ = to_maxtext(tmp_path / "hf", tmp_path / "mt", f"--scan_layers={layout == 'scan'}", *flags)
  theirs = goldens.restore(os.path.join(root, golden, f"maxtext_{layout}", "0", "items"))
  goldens.assert_same_checkpoint(goldens.restore(items), theirs)
  # The cast made them equal: the same transform on the float32 values gives other bits.
  assert not goldens.same_bits(uncast(wide[name]), theirs["params/params/" + array])


def test_text_only_gemma4_is_loaded_lazily_so_its_embedding_is_scaled_from_float32(tmp_path):
  """Without use_multimodal MaxText loads Gemma 4 lazily: the float32 embedding is scaled as is, then
  rounded (bf16(float32(E) * sqrt(48))), so it differs from the eager checkpoint's; every other text
  array is a copy and rounds to the golden's."""
  wide = float32_variant(os.path.join(goldens.GOLDENS_NEWER, "gemma4-mm", "hf"), str(tmp_path / "hf"))
  _, items, _ = to_maxtext(tmp_path / "hf", tmp_path / "mt", "--scan_layers=true")
  ours = goldens.restore(items)
  theirs = goldens.restore(os.path.join(goldens.GOLDENS_NEWER, "gemma4-mm", "maxtext_scan", "0", "items"))
  embedding = "params/params/token_embedder/embedding"
  scaled = (wide["model.language_model.embed_tokens.weight"] * np.float32(np.sqrt(48))).astype(ml_dtypes.bfloat16)
  assert goldens.same_bits(ours[embedding], scaled) and not goldens.same_bits(scaled, theirs[embedding])
  assert all(goldens.same_bits(ours[k], theirs[k]) for k in ours if k != embedding)
