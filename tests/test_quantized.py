"""Quantized sources: FP8 blocks (DeepSeek-V3) and MXFP4 (GPT-OSS), checked against the formats'
definitions decoded by hand here, then end to end: converting a quantized checkpoint gives exactly
what converting its dequantized bf16 twin gives, both layouts; and MaxText -> HF back to FP8."""
import json
import math
import os
import subprocess
import sys

import google_crc32c
import ml_dtypes
import numpy as np
import pytest

from pipeline import verify
from transforms.errors import ConversionError
from pipeline.planner import plan_to_maxtext
from tests import goldens
from tests.test_to_huggingface import tensors, to_hf
from tests.test_to_maxtext import IN_PROCESS
from tests.test_to_maxtext import convert as to_maxtext
from transforms import quantized as qz
from transforms import storage
from transforms.safetensors_io import list_checkpoint, read_header, read_tensor, write_safetensors

MAKE_MODEL = goldens.MAKE_MODEL


# --- the formats, from their definitions ---------------------------------------------------------

def e4m3_value(bits: int) -> float:
  """OFP8 E4M3 (the 'fn' variant: no infinities, only S.1111.111 is NaN): bias 7, 3 mantissa bits."""
  sign = -1.0 if bits & 0x80 else 1.0
  exponent, mantissa = (bits >> 3) & 0xF, bits & 0x7
  if exponent == 0xF and mantissa == 0x7:
    return math.nan
  if exponent == 0:
    return sign * (mantissa / 8) * 2.0 ** -6
  return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


def e2m1_value(nibble: int) -> float:
  """OCP MX FP4 E2M1: bias 1, one mantissa bit, exponent 0 is subnormal (0 or 0.5)."""
  sign = -1.0 if nibble & 0x8 else 1.0
  exponent, mantissa = (nibble >> 1) & 0x3, nibble & 0x1
  if exponent == 0:
    return sign * mantissa * 0.5
  return sign * (1 + mantissa / 2) * 2.0 ** (exponent - 1)


def e8m0_value(byte: int) -> float:
  return math.nan if byte == 255 else 2.0 ** (byte - 127)


def reference_fp8(q: np.ndarray, scale_inv: np.ndarray, block) -> np.ndarray:
  """Element by element: float32(q) * scale_inv of its block, one float32 rounding (as float64 holds
  the 4-bit x 24-bit product exactly)."""
  out = np.empty(q.shape, np.float32)
  bits = q.view(np.uint8)
  for r in range(q.shape[0]):
    for c in range(q.shape[1]):
      out[r, c] = np.float32(e4m3_value(int(bits[r, c])) * float(scale_inv[r // block[0], c // block[1]]))
  return out


def reference_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """[E, out, G, 16] bytes, [E, out, G] exponents -> [E, in, out]: element 32g + 2k is byte k's low nibble."""
  experts, rows, groups, _ = blocks.shape
  out = np.empty((experts, groups * 32, rows), np.float32)
  for e in range(experts):
    for r in range(rows):
      for g in range(groups):
        scale = e8m0_value(int(scales[e, r, g]))
        for k in range(16):
          byte = int(blocks[e, r, g, k])
          out[e, 32 * g + 2 * k, r] = e2m1_value(byte & 0xF) * scale
          out[e, 32 * g + 2 * k + 1, r] = e2m1_value(byte >> 4) * scale
  return out


def test_hand_decoders_agree_with_ml_dtypes_and_the_spec_tables():
  decoded = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
  ours = np.array([e4m3_value(b) for b in range(256)])
  assert np.array_equal(decoded, ours, equal_nan=True)
  assert e4m3_value(0x7E) == 448.0 and e4m3_value(0xFE) == -448.0 and e4m3_value(0x01) == 2.0 ** -9
  assert [e2m1_value(n) for n in range(8)] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
  assert [e2m1_value(n) for n in range(8, 16)] == [-0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def fp8_codes(shape, rng) -> np.ndarray:
  """Every finite E4M3 code (NaN codes 0x7F/0xFF excluded), with 0, -0, +-448 and subnormals forced in."""
  finite = np.array([b for b in range(256) if b not in (0x7F, 0xFF)], np.uint8)
  codes = rng.choice(finite, size=shape)
  special = np.array([0x7E, 0x00, 0x80, 0xFE, 0x01, 0x81], np.uint8)
  codes.reshape(-1)[:6] = special[:codes.size]
  return codes.view(ml_dtypes.float8_e4m3fn)


@pytest.mark.parametrize("shape,block", [((300, 200), (128, 128)), ((128, 256), (128, 128)), ((1, 1), (128, 128)),
                                         ((45, 70), (16, 24))])
def test_fp8_dequantization_matches_the_definition(shape, block):
  rng = np.random.default_rng(1)
  q = fp8_codes(shape, rng)
  scales = np.exp2(rng.uniform(-30, 30, qz.fp8_scale_shape(shape, block))).astype(np.float32)
  got = qz.dequantize_fp8_blocks(q, scales, block)
  assert got.dtype == np.float32
  assert goldens.same_bits(got, reference_fp8(q, scales, block))


def write(path, arrays):
  write_safetensors(str(path), arrays)
  return read_header(str(path))


@pytest.mark.parametrize("rows", [(0, 300), (5, 133), (127, 129), (128, 256), (200, 300), (299, 300), (64, 64)])
def test_fp8_row_ranges_read_only_their_blocks(tmp_path, monkeypatch, rows):
  rng = np.random.default_rng(2)
  q = fp8_codes((300, 200), rng)
  scales = rng.uniform(1e-4, 1e-2, (3, 2)).astype(np.float32)
  refs = write(tmp_path / "m.safetensors", {"w.weight": q, "w.weight_scale_inv": scales})
  (ref,) = qz.logical_tensors(refs, {"quantization_config": qz.DEEPSEEK_FP8_CONFIG}).values()
  reads = []
  real = storage.read_range
  monkeypatch.setattr(storage, "read_range", lambda p, s, e: reads.append(e - s) or real(p, s, e))
  got = ref.read(rows)
  start, stop = rows
  assert goldens.same_bits(got, reference_fp8(q, scales, (128, 128))[start:stop])
  scale_rows = -(-stop // 128) - start // 128 if stop > start else 0
  assert sum(reads) == (stop - start) * 200 + scale_rows * 2 * 4


def mxfp4_inputs(rng, experts=3, rows=37, groups=2):
  blocks = rng.integers(0, 256, (experts, rows, groups, 16), dtype=np.uint8)
  # E8M0 from 2**-127 up to 2**125, the largest at which 6 * scale is finite in float32, and 1.0.
  scales = rng.choice(np.array([0, 1, 100, 126, 127, 128, 200, 252], np.uint8), (experts, rows, groups))
  scales.reshape(-1)[:3] = [0, 127, 252]
  return blocks, scales


def test_mxfp4_dequantization_matches_the_definition(tmp_path):
  rng = np.random.default_rng(3)
  blocks, scales = mxfp4_inputs(rng)
  want = reference_mxfp4(blocks, scales)
  packed = qz.dequantize_mxfp4(blocks, scales)
  assert packed.shape == (3, 37, 64) and goldens.same_bits(np.ascontiguousarray(np.swapaxes(packed, 1, 2)), want)
  refs = write(tmp_path / "m.safetensors", {"mlp.experts.down_proj_blocks": blocks,
                                           "mlp.experts.down_proj_scales": scales})
  logical = qz.logical_tensors(refs, {"quantization_config": {"quant_method": "mxfp4"}})
  ref = logical["mlp.experts.down_proj"]
  assert ref.shape == (3, 64, 37) and ref.dtype == "F32" and ref.nbytes == blocks.nbytes + scales.nbytes
  assert ref.dequantized_nbytes == want.nbytes
  assert goldens.same_bits(np.ascontiguousarray(read_tensor(ref)), want)
  for rows in ((0, 1), (1, 3), (2, 3)):
    assert goldens.same_bits(np.ascontiguousarray(ref.read(rows)), want[rows[0]:rows[1]])


def test_mxfp4_scales_past_float32_are_refused(tmp_path):
  blocks = np.full((1, 2, 1, 16), 0x22, np.uint8)  # every value 1.0: finite even at 2**127
  scales = np.array([[[254], [3]]], np.uint8)
  refs = write(tmp_path / "a.safetensors", {"x_blocks": blocks, "x_scales": scales})
  ref = qz.logical_tensors(refs, {"quantization_config": {"quant_method": "mxfp4"}})["x"]
  assert read_tensor(ref)[0, 0, 0] == np.float32(2.0 ** 127) and read_tensor(ref)[0, 0, 1] == np.float32(2.0 ** -124)
  blocks[0, 0, 0, 0] = 0x07  # 6.0 * 2**127 overflows
  refs = write(tmp_path / "b.safetensors", {"x_blocks": blocks, "x_scales": scales})
  with pytest.raises(ConversionError, match="x_blocks.*overflows float32"):
    read_tensor(qz.logical_tensors(refs, {"quantization_config": {"quant_method": "mxfp4"}})["x"])
  refs = write(tmp_path / "c.safetensors", {"x_blocks": blocks, "x_scales": np.full_like(scales, 255)})
  with pytest.raises(ConversionError, match="x_scales holds the E8M0 NaN"):
    read_tensor(qz.logical_tensors(refs, {"quantization_config": {"quant_method": "mxfp4"}})["x"])


def reference_quantize(w: np.ndarray, block, inverse_scales=False) -> tuple[np.ndarray, np.ndarray]:
  """DeepSeek's weight_quant, block by block: s = amax / 448 (or 1 / (448 / amax)), q = e4m3(w / s),
  float32 arithmetic."""
  rows, cols = w.shape
  scales = np.ones(qz.fp8_scale_shape(w.shape, block), np.float32)
  q = np.empty(w.shape, ml_dtypes.float8_e4m3fn)
  for i in range(scales.shape[0]):
    for j in range(scales.shape[1]):
      tile = w[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]].astype(np.float32)
      amax = np.float32(np.max(np.abs(tile)))
      if amax > 0:
        scales[i, j] = np.float32(1) / (np.float32(448) / amax) if inverse_scales else amax / np.float32(448)
      q[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = (tile / scales[i, j]).astype(
          ml_dtypes.float8_e4m3fn)
  return q, scales


def test_fp8_quantization_is_deepseeks_recipe_and_lossless_on_fp8_values():
  rng = np.random.default_rng(4)
  w = (rng.standard_normal((300, 200)) * 0.02).astype(np.float32)
  w[:128, :128] = 0  # an all-zero block
  q, scales = qz.quantize_fp8_blocks(w)
  want_q, want_scales = reference_quantize(w, (128, 128))
  assert goldens.same_bits(q, want_q) and goldens.same_bits(scales, want_scales)
  assert scales[0, 0] == 1.0 and not np.any(q.view(np.uint8)[:128, :128] & 0x7F)
  # From FP8 values: the same bytes and scales come back, although float32(448 * s) / 448 != s for
  # some of these scales (the recipe alone would not give them back).
  source_q = fp8_codes((1000, 700), rng)
  source_scales = rng.uniform(1e-4, 1e-1, qz.fp8_scale_shape((1000, 700))).astype(np.float32)
  source_q.view(np.uint8)[::128, ::128] = 0x7E  # each block holds 448, as the recipe's blocks do
  naive = (source_scales * np.float32(448)) / np.float32(448)
  assert np.any(naive != source_scales)
  dequantized = qz.dequantize_fp8_blocks(source_q, source_scales)
  q, scales = qz.quantize_fp8_blocks(dequantized)
  assert goldens.same_bits(q, source_q) and goldens.same_bits(scales, source_scales)
  # Through bfloat16 storage: every FP8 value comes back; each scale within one bf16 rounding.
  q, scales = qz.quantize_fp8_blocks(dequantized.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert goldens.same_bits(q, source_q)
  assert np.all(np.abs(scales / source_scales - 1) <= 2.0 ** -8 + 2.0 ** -22)


def test_pairing_errors_name_the_tensor(tmp_path):
  fp8 = {"quantization_config": qz.DEEPSEEK_FP8_CONFIG}
  q = np.zeros((130, 10), ml_dtypes.float8_e4m3fn)
  cases = [
      ({"a.weight": q}, fp8, "FP8 tensor a.weight has no a.weight_scale_inv"),
      ({"a.weight": q, "a.weight_scale_inv": np.ones((1, 1), np.float32)}, fp8,
       r"a.weight_scale_inv is F32 \[1, 1\] but a.weight \[130, 10\] in \[128, 128\] blocks needs F32 \[2, 1\]"),
      ({"b.weight_scale_inv": np.ones((1, 1), np.float32)}, fp8, "b.weight_scale_inv has no F8_E4M3 weight"),
      ({"x_blocks": np.zeros((2, 3, 1, 16), np.uint8)}, {"quantization_config": {"quant_method": "mxfp4"}},
       "MXFP4 tensor x_blocks has no x_scales"),
      ({"x_blocks": np.zeros((2, 3, 1, 16), np.uint8), "x_scales": np.zeros((2, 3), np.uint8)},
       {"quantization_config": {"quant_method": "mxfp4"}}, r"x_scales is U8 \[2, 3\] but .* needs U8 \[2, 3, 1\]"),
      ({"a.weight": q}, {"quantization_config": {"quant_method": "awq"}}, "quant_method 'awq' is not supported"),
  ]
  for i, (arrays, config, message) in enumerate(cases):
    refs = write(tmp_path / f"{i}.safetensors", arrays)
    with pytest.raises(ConversionError, match=message):
      qz.logical_tensors(refs, config)


# --- tiny quantized checkpoints made from the goldens, and their dequantized bf16 twins ----------

def save_model(dest, arrays, config):
  os.makedirs(dest)
  write_safetensors(os.path.join(dest, "model.safetensors"), arrays, {"format": "pt"})
  with open(os.path.join(dest, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  return str(dest)


def golden_config(family):
  with open(goldens.path(family, "hf", "config.json")) as f:
    return json.load(f)


FP8_TEST_BLOCK = [16, 24]  # small blocks, so the golden's tiny matrices span several, with ragged edges


def deepseek_fp8_pair(tmp_path, family="deepseek3", block=FP8_TEST_BLOCK, inverse_scales=False):
  """The golden with DeepSeek's FP8 weights quantized by the recipe, and the same model dequantized to bf16.

  DeepSeek quantized float32 master weights, so the golden's bf16 values are nudged in float32
  first. `inverse_scales` stores 1 / (448 / amax) instead of amax / 448, as quantizers that keep the
  forward scale and store its inverse do (transformers' FineGrainedFP8): about one such scale in ten
  is not float32(float32(448 * s) / 448).
  """
  rng = np.random.default_rng(5)
  quantized, twin = {}, {}
  for name, w in tensors(goldens.path(family, "hf")).items():
    if qz.DEEPSEEK_FP8_WEIGHTS.fullmatch(name):
      master = w.astype(np.float32) * (1 + rng.uniform(-2.0 ** -10, 2.0 ** -10, w.shape)).astype(np.float32)
      q, s = reference_quantize(master, block, inverse_scales)
      quantized[name], quantized[name + "_scale_inv"] = q, s
      twin[name] = reference_fp8(q, s, block).astype(ml_dtypes.bfloat16)
    else:
      quantized[name] = twin[name] = w
  config = golden_config(family)
  fp8 = save_model(tmp_path / "fp8", quantized,
                   {**config, "quantization_config": {**qz.DEEPSEEK_FP8_CONFIG, "weight_block_size": block}})
  return fp8, save_model(tmp_path / "bf16", twin, config)


def reference_mxfp4_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[E, in, out] -> blocks [E, out, in/32, 16], scales [E, out, in/32]: per 32 values the smallest
  power of two that brings the largest under 6, each value to its nearest E2M1."""
  groups = np.swapaxes(w.astype(np.float64), 1, 2).reshape(w.shape[0], w.shape[2], w.shape[1] // 32, 32)
  amax = np.abs(groups).max(-1)
  exponent = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-300) / 6)), -127).clip(-127, 127)
  values = np.array([e2m1_value(n) for n in range(16)])
  codes = np.argmin(np.abs((groups / np.exp2(exponent)[..., None])[..., None] - values), axis=-1)
  return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8), (exponent + 127).astype(np.uint8)


def gpt_oss_mxfp4_pair(tmp_path):
  """The GPT-OSS golden with its experts in MXFP4, and the same model dequantized to bf16.

  MXFP4 packs 32 values along the input axis; the golden's intermediate size (48) is not a multiple
  of 32, so both models get it zero-padded to 64 first (extra gate/up outputs and down inputs of
  zero: the same function).
  """
  config = {**golden_config("gpt-oss"), "intermediate_size": 64}
  quantized, twin = {}, {}
  for name, w in tensors(goldens.path("gpt-oss", "hf")).items():
    if name.endswith("experts.gate_up_proj") or name.endswith("experts.gate_up_proj_bias"):
      w = np.concatenate([w, np.zeros((*w.shape[:-1], 32), w.dtype)], axis=-1)
    if name.endswith("experts.down_proj"):
      w = np.concatenate([w, np.zeros((w.shape[0], 16, w.shape[2]), w.dtype)], axis=1)
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
      blocks, scales = reference_mxfp4_quantize(w)
      quantized[name + "_blocks"], quantized[name + "_scales"] = blocks, scales
      twin[name] = reference_mxfp4(blocks, scales).astype(ml_dtypes.bfloat16)
    else:
      quantized[name] = twin[name] = w
  mxfp4 = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                               "model.embed_tokens", "lm_head"]}
  return save_model(tmp_path / "mxfp4", quantized, {**config, "quantization_config": mxfp4}), \
      save_model(tmp_path / "bf16", twin, config)


@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_fp8_deepseek_converts_exactly_like_its_dequantized_twin(tmp_path, layout):
  fp8, twin = deepseek_fp8_pair(tmp_path)
  plan, items, totals = to_maxtext(fp8, tmp_path / "a", f"--scan_layers={layout == 'scan'}")
  _, twin_items, _ = to_maxtext(twin, tmp_path / "b", f"--scan_layers={layout == 'scan'}")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(twin_items))
  sources = [s for t in plan.tasks for s in t.sources]
  quantized = [s for s in sources if isinstance(s, qz.QuantizedRef)]
  assert len(quantized) == 72 and all(s.format == "fp8" and s.block == (16, 24) for s in quantized)
  on_disk = list_checkpoint(fp8)
  assert plan.unused == () and totals["read-bytes"] == plan.source_bytes == sum(r.nbytes for r in on_disk.values())
  with open(tmp_path / "a" / "0" / "ckptflow_manifest.json") as f:
    manifest = json.load(f)
  ref = next(s for s in quantized if s.name.endswith("layers.1.mlp.experts.3.down_proj.weight"))
  assert manifest["sources"] == {fp8 + f"/{name}": storage.fingerprint(fp8 + f"/{name}")
                                 for name in ("model.safetensors", "config.json")}
  assert manifest["tensors"][ref.name]["crc32c"] == google_crc32c.value(read_tensor(ref).tobytes())
  assert plan.dequantized_bytes == sum(qz.dequantized_nbytes(s) for s in sources) == sum(
      read_tensor(r).size * 4 if r.dtype == "F8_E4M3" else r.nbytes
      for n, r in on_disk.items() if not n.endswith("_scale_inv"))


@pytest.mark.parametrize("layout,save_dtype", [("scan", "bfloat16"), ("unscan", "float32")])
def test_mxfp4_gpt_oss_converts_exactly_like_its_dequantized_twin(tmp_path, capsys, layout, save_dtype):
  """MXFP4 values are exact in bf16, so even a float32 save matches the twin's bit for bit."""
  mxfp4, twin = gpt_oss_mxfp4_pair(tmp_path)
  flags = (f"--scan_layers={layout == 'scan'}", f"--save_dtype={save_dtype}")
  plan, items, _ = to_maxtext(mxfp4, tmp_path / "a", *flags)
  _, twin_items, _ = to_maxtext(twin, tmp_path / "b", *flags)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(twin_items))
  quantized = {s.name for t in plan.tasks for s in t.sources if isinstance(s, qz.QuantizedRef)}
  assert quantized == {f"model.layers.{i}.mlp.experts.{p}" for i in range(4) for p in ("gate_up_proj", "down_proj")}
  assert plan.unused == ()
  # pipeline.verify re-reads the MXFP4 source, dequantizes it again and finds every slice identical.
  assert verify.main([f"load_parameters_path={items}", f"--hf_model_path={mxfp4}", *IN_PROCESS,
                      "--progress=false"]) == 0
  assert capsys.readouterr().out.splitlines()[-1].endswith(f"{len(plan.tasks)} bit-identical")


def test_full_width_fp8_deepseek_v3_plans_from_headers(tmp_path):
  """Real DeepSeek-V3 tensor shapes (7168 wide, 128x128 blocks, ragged edges such as kv_a's 576 rows)
  with fewer layers and experts; sparse files, so only headers exist. (The full 61 x 256 header set,
  129 shards, plans the same way in about 2 s and 160 MB.)"""
  subprocess.run([sys.executable, MAKE_MODEL, "--preset", "deepseek3-671b", "--layers", "5", "--experts", "8",
                  "--sparse", "--fp8", "--out", str(tmp_path)], check=True, capture_output=True)
  plan = plan_to_maxtext(str(tmp_path))
  on_disk = list_checkpoint(str(tmp_path))
  mtp = {n for n in on_disk if n.startswith("model.layers.5.")}
  fp8 = {n for n, r in on_disk.items() if r.dtype == "F8_E4M3" and n not in mtp}
  assert fp8 == {n for n in on_disk if qz.DEEPSEEK_FP8_WEIGHTS.fullmatch(n) and n not in mtp}
  sources = {s.name: s for t in plan.tasks for s in t.sources}
  assert {n for n, s in sources.items() if isinstance(s, qz.QuantizedRef)} == fp8
  kv_a = sources["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
  assert kv_a.shape == (576, 7168) and kv_a.scales.shape == (5, 56) and kv_a.block == (128, 128)
  assert set(plan.unused) == {n.removesuffix("_scale_inv") for n in mtp}
  assert plan.source_bytes == sum(r.nbytes for n, r in on_disk.items() if n not in mtp)
  assert plan.dequantized_bytes == sum(math.prod(r.shape) * (4 if n in fp8 else r.nbytes // math.prod(r.shape))
                                       for n, r in on_disk.items() if n not in mtp and not n.endswith("_scale_inv"))
  assert plan.dequantized_bytes > 2 * plan.source_bytes


# --- MaxText -> HF back to FP8 blocks ------------------------------------------------------------

def read_config(model_dir):
  with open(os.path.join(model_dir, "config.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("inverse_scales", [False, True])
def test_fp8_through_float32_maxtext_and_back_gives_the_same_bytes_and_scales(tmp_path, inverse_scales):
  fp8, _ = deepseek_fp8_pair(tmp_path, inverse_scales=inverse_scales)
  source = tensors(fp8)
  scales = np.concatenate([v.reshape(-1) for k, v in source.items() if k.endswith("_scale_inv")])
  # amax / 448 of the dequantized block alone gives back only DeepSeek's own kind of scale.
  assert np.any((scales * np.float32(448)) / np.float32(448) != scales) == inverse_scales
  _, items, _ = to_maxtext(fp8, tmp_path / "mt", "--save_dtype=float32", "--scan_layers=false")
  plan, totals = to_hf(items, tmp_path / "hf", "--quantize_fp8_blocks", hf_model_path=fp8)
  back = tensors(tmp_path / "hf")
  assert sorted(back) == sorted(source)
  differ = [k for k in source if not goldens.same_bits(back[k], source[k])]
  assert not differ, differ[:5]
  assert read_config(tmp_path / "hf")["quantization_config"] == read_config(fp8)["quantization_config"]
  assert totals["write-bytes"] == sum(v.nbytes for v in source.values())
  header = read_header(str(tmp_path / "hf" / "model.safetensors"))
  order = sorted(header, key=lambda n: header[n].start)
  assert all(order[order.index(n) - 1] == n.removesuffix("_scale_inv") for n in order if n.endswith("_scale_inv"))


def test_fp8_through_bf16_maxtext_keeps_every_fp8_value_and_scales_within_one_bf16_rounding(tmp_path):
  fp8, twin = deepseek_fp8_pair(tmp_path)
  _, items, _ = to_maxtext(fp8, tmp_path / "mt")
  to_hf(items, tmp_path / "hf", "--quantize_fp8_blocks", hf_model_path=fp8)
  back, source = tensors(tmp_path / "hf"), tensors(fp8)
  assert sorted(back) == sorted(source)
  for name, want in source.items():
    if name.endswith("_scale_inv"):
      assert back[name].dtype == np.float32
      assert np.all(np.abs(back[name] / want - 1) <= 2.0 ** -8 + 2.0 ** -22), name
    else:
      assert goldens.same_bits(back[name], want), name
  # Without the flag the same checkpoint comes back as the bf16 model, and config.json says so.
  to_hf(items, tmp_path / "plain", hf_model_path=fp8)
  assert "quantization_config" not in read_config(tmp_path / "plain")
  plain, bf16 = tensors(tmp_path / "plain"), tensors(twin)
  assert sorted(plain) == sorted(bf16) and all(goldens.same_bits(plain[k], bf16[k]) for k in bf16)


def test_quantize_fp8_blocks_is_for_deepseek_only(tmp_path):
  with pytest.raises(ConversionError, match="only DeepSeek models .* not gpt-oss"):
    to_hf(goldens.items("gpt-oss", "scan"), tmp_path, "--quantize_fp8_blocks",
          hf_model_path=goldens.path("gpt-oss", "hf"))
  assert not os.listdir(tmp_path)


def test_released_block_size_and_config_without_a_quantized_source(tmp_path):
  """From a bf16 config (MaxText's own DeepSeek3 checkpoint), DeepSeek-V3's 128x128 blocks and config."""
  to_hf(goldens.items("deepseek3", "scan"), tmp_path, "--quantize_fp8_blocks",
        hf_model_path=goldens.path("deepseek3", "hf"))
  assert read_config(tmp_path)["quantization_config"] == qz.DEEPSEEK_FP8_CONFIG
  back, golden = tensors(tmp_path), tensors(goldens.path("deepseek3", "hf"))
  for name, want in golden.items():
    if not qz.DEEPSEEK_FP8_WEIGHTS.fullmatch(name):
      assert goldens.same_bits(back[name], want), name
      continue
    q, scale = back[name], back[name + "_scale_inv"]
    assert q.dtype == ml_dtypes.float8_e4m3fn and scale.shape == qz.fp8_scale_shape(want.shape)
    want_q, want_scale = reference_quantize(want.astype(np.float32), (128, 128))
    assert goldens.same_bits(q, want_q) and goldens.same_bits(scale, want_scale), name


def test_scales_in_another_shard_are_paired_and_both_files_are_sources(tmp_path):
  q = fp8_codes((130, 10), np.random.default_rng(6))
  scales = np.array([[0.5], [0.25]], np.float32)
  write_safetensors(str(tmp_path / "model-00001-of-00002.safetensors"), {"a.weight": q})
  write_safetensors(str(tmp_path / "model-00002-of-00002.safetensors"), {"a.weight_scale_inv": scales})
  (ref,) = qz.logical_tensors(list_checkpoint(str(tmp_path)), {"quantization_config": qz.DEEPSEEK_FP8_CONFIG}).values()
  assert ref.files == (str(tmp_path / "model-00001-of-00002.safetensors"),
                       str(tmp_path / "model-00002-of-00002.safetensors"))
  assert goldens.same_bits(read_tensor(ref), reference_fp8(q, scales, (128, 128)))


def test_quantized_sources_in_row_blocks_convert_like_whole_ones(tmp_path):
  """Row blocks that start and stop inside FP8 scale blocks (16 rows) and MXFP4 experts read only
  their rows and scale rows, and the checkpoint is the one whole elements make."""
  for kind, (quantized, twin) in {"fp8": deepseek_fp8_pair(tmp_path / "ds"),
                                  "mxfp4": gpt_oss_mxfp4_pair(tmp_path / "oss")}.items():
    plan, split, totals = to_maxtext(quantized, tmp_path / f"{kind}-split", "--max_element_size=3000")
    assert any(t.block is not None and any(isinstance(s, qz.QuantizedRef) for s in t.sources) for t in plan.tasks)
    assert totals["read-bytes"] == plan.source_bytes
    _, whole, _ = to_maxtext(twin, tmp_path / f"{kind}-whole")
    goldens.assert_same_checkpoint(goldens.restore(split), goldens.restore(whole))


def test_fp8_blocks_written_in_row_blocks_are_the_same_file(tmp_path):
  """Row blocks of whole 16-row FP8 blocks quantize on their own; the scales follow the weight."""
  fp8, _ = deepseek_fp8_pair(tmp_path)
  _, items, _ = to_maxtext(fp8, tmp_path / "mt", "--save_dtype=float32")
  whole, _ = to_hf(items, tmp_path / "whole", "--quantize_fp8_blocks", hf_model_path=fp8)
  split, _ = to_hf(items, tmp_path / "split", "--quantize_fp8_blocks", "--max_element_size=3000", hf_model_path=fp8)
  fp8_tasks = [t for s in split.shards for t in s.tensors if t.fp8_block and t.split is not None]
  assert any(len(t.blocks) > 1 for t in fp8_tasks)
  assert all(b.rows[0] % t.fp8_block[0] == 0 for t in fp8_tasks for b in t.blocks)
  for name in os.listdir(tmp_path / "whole"):
    if name.endswith(".safetensors"):
      assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
