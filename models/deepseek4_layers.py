"""DeepSeek V4's decoder as MaxText's deepseek4 holds it (param_mapping DEEPSEEKV4_*, e591f30, with the
fixes its 0.2.5 source makes): per layer multi-query attention with a low-rank query, attention sinks
and a grouped low-rank output, a KV compressor (models/compressors.py), hyper-connections around
both blocks (models/hyper_connections.py) and a MoE block whose first layers route by token id.

Two configs and two sets of names say the same model: transformers' (`layer_types`,
`mlp_layer_types`, `compress_rates`; names under model.layers.N.self_attn/mlp, which MaxText's
mapping reads) and the Hub's release (`compress_ratios`, `num_hash_layers`; layers.N.attn/ffn,
hc_attn_fn, ...). Params are declared once under transformers' names; `hub_named` derives the
Hub's, and the config decides which a conversion reads and writes.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from models.compressors import CSA, HCA, compressor, indexer
from models.hyper_connections import hc_sizes, hyper_connection
from models.layer_pattern import LayerTest
from models.spec import Config, Param
from transforms.errors import ConversionError

SLIDING, HASH = "sliding_attention", "hash_moe"
KINDS = {"compressed_sparse_attention": CSA, "heavily_compressed_attention": HCA, SLIDING: None}
CSA_RATIO = 4  # the Hub's config says a layer's kind by its ratio alone: 4 overlaps and has an indexer


def hub_config(config: Config) -> bool:
  """The Hub's config.json (and so the Hub's tensor names), not transformers'."""
  return "compress_ratios" in config


def mtp_layers(config: Config) -> int:
  return config.get("num_nextn_predict_layers") or 0


def layer_kinds(config: Config) -> list[str | None]:
  """Each decoder layer's compressor: CSA, HCA or None (sliding window only)."""
  layers = config["num_hidden_layers"]
  if hub_config(config):
    ratios = list(config["compress_ratios"])
    if len(ratios) not in (layers, layers + mtp_layers(config)):
      raise ConversionError(f"config.json: compress_ratios lists {len(ratios)} layers but num_hidden_layers is "
                            f"{layers} (+ {mtp_layers(config)} MTP); fix config.json so they agree")
    return [None if r == 0 else CSA if r == CSA_RATIO else HCA for r in ratios[:layers]]
  types = list(config["layer_types"])
  if len(types) != layers or any(t not in KINDS for t in types):
    raise ConversionError(f"config.json: layer_types lists {len(types)} layers ({sorted(set(types))}) but "
                          f"num_hidden_layers is {layers}; each must be one of {sorted(KINDS)}")
  return [KINDS[t] for t in types]


def hash_layers(config: Config) -> int:
  """How many leading layers route by token id (tid2eid) rather than by the router's scores."""
  if hub_config(config):
    return config.get("num_hash_layers") or 0
  types = list(config.get("mlp_layer_types") or [])
  count = next((i for i, t in enumerate(types) if t != HASH), len(types))
  if HASH in types[count:]:
    raise ConversionError(f"config.json: mlp_layer_types has {HASH} at layer {types.index(HASH, count)}, after "
                          "other layers; MaxText's deepseek4 routes by token id only in its first layers")
  return count


def kind_is(kind: str | None) -> LayerTest:
  return lambda config, layer: layer_kinds(config)[layer] == kind


def ratios(config: Config) -> dict[str, int]:
  if hub_config(config):
    kinds = layer_kinds(config)
    found = {k: {r for r, x in zip(config["compress_ratios"], kinds) if x == k} for k in (CSA, HCA)}
  else:
    rates = config.get("compress_rates") or {}
    found = {KINDS[name]: {rate} for name, rate in rates.items() if KINDS.get(name)}
  if any(len(v) > 1 for v in found.values()):
    raise ConversionError(f"config.json: compress ratios {found} differ between layers of one kind; MaxText's "
                          "deepseek4 has one ratio for CSA layers and one for HCA layers")
  return {f"{k}_ratio": next(iter(found.get(k) or {0})) for k in (CSA, HCA)}


def deepseek4_sizes(config: Config) -> dict[str, Any]:
  heads, head_dim = config["num_attention_heads"], config["head_dim"]
  layer_kinds(config)
  return {
      "layers": config["num_hidden_layers"], "embed": config["hidden_size"], "vocab": config["vocab_size"],
      "heads": heads, "kv_heads": config["num_key_value_heads"], "head_dim": head_dim,
      "q_lora": config["q_lora_rank"], "o_groups": config["o_groups"], "o_lora": config["o_lora_rank"],
      "o_in": heads * head_dim // config["o_groups"],
      "experts": config["n_routed_experts"], "moe_mlp": config["moe_intermediate_size"],
      "shared_mlp": config["n_shared_experts"] * config["moe_intermediate_size"],
      "topk": config["num_experts_per_tok"],
      "csa_kv": 2 * head_dim, "idx_kv": 2 * config["index_head_dim"],
      "index_heads": config["index_n_heads"], "index_head_dim": config["index_head_dim"],
      **ratios(config), **hc_sizes(config)}


def scan_refused(config: Config) -> str | None:
  """MaxText scans the layers after the hash-routed ones in blocks of 2 (HCA, CSA)."""
  start, kinds = hash_layers(config), layer_kinds(config)
  rest = kinds[start:]
  if len(rest) % 2 or any(k != rest[i % 2] for i, k in enumerate(rest)):
    return (f"MaxText's deepseek4 scans the layers after the {start} hash-routed ones as repeating "
            f"(HCA, CSA) pairs, but this config's layers {start}.. are {rest}")
  return None


_HUB = [(r"^model\.embed_tokens\.", "embed."), (r"^model\.norm\.", "norm."), (r"^model\.hc_head\.hc_", "hc_head_"),
        (r"^model\.layers\.", "layers."), (r"\.input_layernorm\.", ".attn_norm."),
        (r"\.post_attention_layernorm\.", ".ffn_norm."), (r"\.(attn|ffn)_hc\.", r".hc_\1_"),
        (r"\.self_attn\.compressor\.indexer\.q_b_proj\.", ".attn.indexer.wq_b."),
        (r"\.self_attn\.compressor\.indexer\.scorer\.", ".attn.indexer."),
        (r"\.self_attn\.compressor\.indexer\.", ".attn.indexer.compressor."),
        (r"\.self_attn\.compressor\.", ".attn.compressor."), (r"compressor\.kv_proj\.", "compressor.wkv."),
        (r"compressor\.gate_proj\.", "compressor.wgate."), (r"compressor\.position_bias$", "compressor.ape"),
        (r"compressor\.kv_norm\.", "compressor.norm."), (r"\.self_attn\.q_a_proj\.", ".attn.wq_a."),
        (r"\.self_attn\.q_a_norm\.", ".attn.q_norm."), (r"\.self_attn\.q_b_proj\.", ".attn.wq_b."),
        (r"\.self_attn\.kv_proj\.", ".attn.wkv."), (r"\.self_attn\.sinks$", ".attn.attn_sink"),
        (r"\.self_attn\.o_(a|b)_proj\.", r".attn.wo_\1."), (r"\.self_attn\.", ".attn."),
        (r"\.mlp\.gate\.e_score_correction_bias$", ".ffn.gate.bias"),
        (r"\.mlp\.shared_experts\.gate_proj\.", ".ffn.shared_experts.w1."),
        (r"\.mlp\.shared_experts\.up_proj\.", ".ffn.shared_experts.w3."),
        (r"\.mlp\.shared_experts\.down_proj\.", ".ffn.shared_experts.w2."), (r"\.mlp\.", ".ffn.")]


def hub_name(name: str) -> str:
  """transformers' name of a V4 tensor -> the Hub release's."""
  for pattern, replacement in _HUB:
    name = re.sub(pattern, replacement, name)
  return name


def hub_named(params: tuple[Param, ...]) -> tuple[Param, ...]:
  """Each param under transformers' names (for transformers' config) and the Hub's (for the Hub's)."""
  ours = lambda p: (lambda c: not hub_config(c) and p.applies(c))
  hubs = lambda p: (lambda c: hub_config(c) and p.applies(c))
  return (*(dataclasses.replace(p, when=ours(p)) for p in params),
          *(dataclasses.replace(p, hf=hub_name(p.hf), when=hubs(p)) for p in params))


LAYER, BLOCK = "model.layers.{layer}.", "decoder/{layers}/"


def layer_params(stack: str, hashed: bool) -> list[Param]:
  """One decoder layer in HF module order; `hashed`: the token-id routed layers (tid2eid, no router bias)."""
  a, m, moe = LAYER + "self_attn.", BLOCK + "self_attention/", BLOCK + "mlp/MoeBlock_0/"
  experts, shared = LAYER + "mlp.experts.{expert}.", BLOCK + "mlp/shared_experts/"
  params = [
      *hyper_connection(LAYER + "attn_hc.", BLOCK + "mhc_attention"),
      Param(LAYER + "input_layernorm.weight", BLOCK + "pre_self_attention_layer_norm/scale", "embed", "embed"),
      Param(a + "q_a_proj.weight", m + "wq_a/kernel", "q_lora embed", "embed q_lora"),
      Param(a + "q_a_norm.weight", m + "q_norm/scale", "q_lora", "q_lora"),
      Param(a + "q_b_proj.weight", m + "wq_b/kernel", "(heads head_dim) q_lora", "q_lora heads head_dim"),
      Param(a + "kv_proj.weight", m + "wkv/kernel", "(kv_heads head_dim) embed", "embed kv_heads head_dim"),
      Param(a + "kv_norm.weight", m + "kv_norm/scale", "head_dim", "head_dim"),
      Param(a + "sinks", m + "sinks", "heads", "heads", hf_dtype="F32"),
      Param(a + "o_a_proj.weight", m + "o_a_proj/kernel", "(o_groups o_lora) o_in", "o_groups o_in o_lora"),
      Param(a + "o_b_proj.weight", m + "o_b_proj/kernel", "embed (o_groups o_lora)", "(o_groups o_lora) embed"),
      *compressor(CSA, a + "compressor.", m + "csa_compressor", on=kind_is(CSA)),
      *indexer(a + "compressor.indexer.", m + "csa_compressor/indexer", on=kind_is(CSA)),
      *compressor(HCA, a + "compressor.", m + "hca_compressor", on=kind_is(HCA)),
      *hyper_connection(LAYER + "ffn_hc.", BLOCK + "mhc_mlp"),
      Param(LAYER + "post_attention_layernorm.weight", BLOCK + "post_self_attention_layer_norm/scale", "embed",
            "embed"),
      Param(LAYER + "mlp.gate.weight", moe + "gate/kernel", "experts embed", "embed experts"),
      Param(LAYER + "mlp.gate.tid2eid", moe + "tid2eid", "vocab topk", "vocab topk", hf_dtype="I64") if hashed else
      Param(LAYER + "mlp.gate.e_score_correction_bias", moe + "gate/bias", "experts", "experts", hf_dtype="F32",
            scan_axis=0),
      Param(experts + "w1.weight", moe + "wi_0", "moe_mlp embed", "embed moe_mlp"),
      Param(experts + "w2.weight", moe + "wo", "embed moe_mlp", "moe_mlp embed"),
      Param(experts + "w3.weight", moe + "wi_1", "moe_mlp embed", "embed moe_mlp"),
      Param(LAYER + "mlp.shared_experts.gate_proj.weight", shared + "wi_0/kernel", "shared_mlp embed",
            "embed shared_mlp"),
      Param(LAYER + "mlp.shared_experts.up_proj.weight", shared + "wi_1/kernel", "shared_mlp embed",
            "embed shared_mlp"),
      Param(LAYER + "mlp.shared_experts.down_proj.weight", shared + "wo/kernel", "embed shared_mlp",
            "shared_mlp embed"),
  ]
  return [dataclasses.replace(p, stack=stack) for p in params]


def without_mtp(config: Config) -> dict[str, Any]:
  """The config the way back writes: MaxText has no MTP layer, so neither has the checkpoint written
  (num_nextn_predict_layers 0, compress_ratios of the decoder's layers only); its weights are written
  as they are, not quantized (no expert_dtype)."""
  out = {k: v for k, v in config.items() if k != "expert_dtype"}
  if "num_nextn_predict_layers" in out:
    out["num_nextn_predict_layers"] = 0
  if hub_config(out):
    out["compress_ratios"] = list(out["compress_ratios"])[:out["num_hidden_layers"]]
  return out
