"""Tensor lists of two releases stored quantized, at their real sizes, for bench/make_model.py:
DeepSeek-V4-Flash in its Hub format (Hub names; FP4 e2m1 routed experts with E8M0 scales per 32
values, FP8 e4m3 attention / shared experts / MTP projections with E8M0 scales per 128 x 128 block,
F32 hyper-connections, sinks, position biases and router bias, I64 hash routing table; one MTP
layer) and Kimi-K2 in compressed-tensors int4 (routed experts pack-quantized, groups of 32).

Both generators are checked against the goldens' tiny checkpoints of the same formats
(tests/test_bench_presets.py): the same names, dtypes and shapes for the goldens' configs.
"""
import math

FP8_BLOCK = 128
FP4_GROUP = 32
INT4_GROUP = 32
# The Hub's V4 weights stored as FP8 blocks (the rest of the attention and every norm stay BF16).
V4_FP8 = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight", "attn.wo_b.weight",
          "attn.indexer.wq_b.weight", "shared_experts.w1.weight", "shared_experts.w2.weight",
          "shared_experts.w3.weight", "e_proj.weight", "h_proj.weight")


def _fp8(name, shape):
  return [(name, "F8_E4M3", shape),
          (name.removesuffix(".weight") + ".scale", "F8_E8M0",
           (math.ceil(shape[0] / FP8_BLOCK), math.ceil(shape[1] / FP8_BLOCK)))]


def _fp4(name, shape):
  return [(name, "I8", (shape[0], shape[1] // 2)),
          (name.removesuffix(".weight") + ".scale", "F8_E8M0", (shape[0], shape[1] // FP4_GROUP))]


def deepseek4_hub(c, quantized=True):
  """(name, dtype, shape) of every tensor of a V4 checkpoint in the Hub's release format (its
  dequantized twin, every weight BF16, when not `quantized`)."""
  h, v, hc = c["hidden_size"], c["vocab_size"], c["hc_mult"]
  heads, hd, ql = c["num_attention_heads"], c["head_dim"], c["q_lora_rank"]
  e, m = c["n_routed_experts"], c["moe_intermediate_size"]
  ih, ihd = c["index_n_heads"], c["index_head_dim"]
  out = []

  def add(name, shape, dtype="BF16"):
    if quantized and dtype == "BF16" and name.endswith(V4_FP8):
      out.extend(_fp8(name, shape))
    elif quantized and dtype == "FP4":
      out.extend(_fp4(name, shape))
    elif dtype == "FP4":
      out.append((name, "BF16", tuple(shape)))
    else:
      out.append((name, dtype, tuple(shape)))

  def hc_block(p, kind):
    add(f"{p}hc_{kind}_fn", ((2 + hc) * hc, hc * h), "F32")
    add(f"{p}hc_{kind}_base", ((2 + hc) * hc,), "F32")
    add(f"{p}hc_{kind}_scale", (3,), "F32")

  def head(p):
    add(p + "hc_head_fn", (hc, hc * h), "F32")
    add(p + "hc_head_base", (hc,), "F32")
    add(p + "hc_head_scale", (1,), "F32")

  def layer(p, ratio, hashed):
    hc_block(p, "attn")
    hc_block(p, "ffn")
    add(p + "attn_norm.weight", (h,))
    add(p + "ffn_norm.weight", (h,))
    a = p + "attn."
    add(a + "wq_a.weight", (ql, h))
    add(a + "q_norm.weight", (ql,))
    add(a + "wq_b.weight", (heads * hd, ql))
    add(a + "wkv.weight", (c["num_key_value_heads"] * hd, h))
    add(a + "kv_norm.weight", (hd,))
    add(a + "attn_sink", (heads,), "F32")
    add(a + "wo_a.weight", (c["o_groups"] * c["o_lora_rank"], heads * hd // c["o_groups"]))
    add(a + "wo_b.weight", (h, c["o_groups"] * c["o_lora_rank"]))
    if ratio:
      width = (2 if ratio == 4 else 1) * hd
      add(a + "compressor.wkv.weight", (width, h))
      add(a + "compressor.wgate.weight", (width, h))
      add(a + "compressor.ape", (ratio, width), "F32")
      add(a + "compressor.norm.weight", (hd,))
    if ratio == 4:
      add(a + "indexer.compressor.wkv.weight", (2 * ihd, h))
      add(a + "indexer.compressor.wgate.weight", (2 * ihd, h))
      add(a + "indexer.compressor.ape", (4, 2 * ihd), "F32")
      add(a + "indexer.compressor.norm.weight", (ihd,))
      add(a + "indexer.wq_b.weight", (ih * ihd, ql))
      add(a + "indexer.weights_proj.weight", (ih, h))
    f = p + "ffn."
    add(f + "gate.weight", (e, h))
    if hashed:
      add(f + "gate.tid2eid", (v, c["num_experts_per_tok"]), "I64")
    else:
      add(f + "gate.bias", (e,), "F32")
    for x in range(e):
      add(f"{f}experts.{x}.w1.weight", (m, h), "FP4")
      add(f"{f}experts.{x}.w2.weight", (h, m), "FP4")
      add(f"{f}experts.{x}.w3.weight", (m, h), "FP4")
    s = m * c["n_shared_experts"]
    add(f + "shared_experts.w1.weight", (s, h))
    add(f + "shared_experts.w2.weight", (h, s))
    add(f + "shared_experts.w3.weight", (s, h))

  add("embed.weight", (v, h))
  ratios, layers = c["compress_ratios"], c["num_hidden_layers"]
  for i in range(layers):
    layer(f"layers.{i}.", ratios[i], i < c["num_hash_layers"])
  for i in range(c.get("num_nextn_predict_layers") or 0):
    p = f"mtp.{i}."
    layer(p, ratios[layers + i] if len(ratios) > layers + i else 0, False)
    add(p + "e_proj.weight", (h, h))
    add(p + "h_proj.weight", (h, h))
    for norm in ("enorm", "hnorm", "norm"):
      add(f"{p}{norm}.weight", (h,))
    head(p)
  head("")
  add("norm.weight", (h,))
  add("head.weight", (v, h))
  return out


def int4_experts(specs):
  """DeepSeek-V3-named (name, shape) -> (name, dtype, shape) with routed experts pack-quantized int4."""
  out = []
  for name, shape in specs:
    if ".mlp.experts." in name:
      base = name.removesuffix(".weight")
      out += [(base + ".weight_packed", "I32", (shape[0], shape[1] // 8)),
              (base + ".weight_scale", "BF16", (shape[0], shape[1] // INT4_GROUP)),
              (base + ".weight_shape", "I64", (2,))]
    else:
      out.append((name, "BF16", tuple(shape)))
  return out
