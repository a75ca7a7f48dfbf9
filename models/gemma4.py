"""Gemma 4: 31B (dense), 26B (experts beside the dense MLP, which MaxText calls shared_experts), the small
E2B/E4B (per-layer embeddings, last layers reusing earlier layers' keys and values); the vision tower with
use_multimodal=true (models/gemma4_vision.py). From MaxText's GEMMA4*_MAXTEXT_TO_HF_PARAM_* (e591f30):
- Values are copied as they are (norms carry no offset, the query no scale) but for the embedding,
  stored as bf16(f32(E) * f32(sqrt(hidden))) (not Gemma 3's bf16-rounded sqrt).
- Global layers (every 6th; E2B every 5th) take head_dim / kv heads from `per_layer_config` (or the
  Hub's global_head_dim / num_global_key_value_heads); with attention_k_eq_v they have no v_proj (K = V).
- Scanned, a block of 6 is decoder/scanned_blocks/local_layers (5 layers on axes 1, 2) and global_layer
  (axis 1), the rest under layers_remainder. MaxText cannot scan the small models' decoder; nor do we.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from models.decoder import decoder_sizes
from models.experts import fused_experts
from models.gemma import sandwich_norms, scaled_embedding
from models.gemma4_vision import PROJECTOR, STACK as VISION, vision_sizes, vision_tower
from models.layer_pattern import all_of, check_pattern, is_global, kv_shared, negated, text_config, uniform
from models.multimodal import multimodal, nested, text_only_hf_config
from models.per_layer_embeddings import ple_layer, ple_model, ple_sizes
from models.spec import Config, Family, Param, Stack
from transforms.errors import ConversionError

PERIOD = 6  # MaxText's gemma4 block: 5 sliding-window layers, then one global


def _small(config: Config) -> bool:
  """E2B/E4B: MaxText's gemma4_small decoder (per-layer embeddings, KV sharing)."""
  text = text_config(config)
  return bool(text.get("hidden_size_per_layer_input") or text.get("num_kv_shared_layers"))


def gemma4_sizes(config: Config) -> dict[str, Any]:
  text = text_config(config)
  model = "gemma4 E2B/E4B decoder (gemma4_small)" if _small(config) else "gemma4 decoder"
  period = check_pattern(config, (5, 6) if _small(config) else (PERIOD,), model)
  if not text.get("tie_word_embeddings", config.get("tie_word_embeddings", True)):
    raise ConversionError("config.json: tie_word_embeddings is false, but MaxText's gemma4 computes the logits "
                          "with the embedding (logits_via_embedding); it has no place for lm_head.weight")
  if _small(config) and multimodal(config):
    raise ConversionError("use_multimodal=true: MaxText's gemma4 E2B/E4B decoder (gemma4_small) has no vision "
                          "encoder yet; convert the text model with use_multimodal=false")
  sizes = decoder_sizes(text)
  sizes.update(one=1, two=2, wide_mlp=2 * sizes["mlp"], embed_scale=float(np.float32(math.sqrt(sizes["embed"]))))
  if "per_layer_config" in text:
    globals_ = [i for i in range(sizes["layers"]) if is_global(config, i, period)]
    sizes.update(global_head_dim=uniform(config, globals_, "head_dim", model),
                 global_kv_heads=uniform(config, globals_, "num_key_value_heads", model))
  else:  # the released config.json: transformers derives per_layer_config from these
    kv = text.get("num_global_key_value_heads") if text.get("attention_k_eq_v") else None
    sizes.update(global_head_dim=text.get("global_head_dim", 512), global_kv_heads=kv or sizes["kv_heads"])
  if text.get("enable_moe_block"):
    sizes.update(experts=text["num_experts"], moe_mlp=text["moe_intermediate_size"])
  if text.get("hidden_size_per_layer_input"):
    sizes.update(ple_sizes(text))
  if multimodal(config):
    sizes.update(vision_sizes(config["vision_config"]))
  return sizes


_global = lambda config, layer: is_global(config, layer, PERIOD)


# K = V on global layers of attention_k_eq_v models: no v_proj there (MaxText's share_kv_projections).
_has_value = lambda config, layer: not (_global(config, layer) and text_config(config).get("attention_k_eq_v"))
# E2B's KV-shared layers have a double-width MLP.
_wide = lambda config, layer: bool(text_config(config).get("use_double_wide_mlp")) and kv_shared(config, layer)


def _text(hf: str, when: Callable[[Config], bool]) -> tuple[Param, ...]:
  """The text model under `hf` ("model." or "model.language_model."), in HF module order."""
  layer, mt = hf + "layers.{layer}.", "decoder/{layers}/"
  moe = lambda c: when(c) and bool(text_config(c).get("enable_moe_block"))
  ple = lambda c: when(c) and bool(text_config(c).get("hidden_size_per_layer_input"))
  a, m = layer + "self_attn.", mt + "self_attention/"
  own_kv = negated(kv_shared)
  params = [Param(layer + "layer_scalar", mt + "layer_scalar", "one", "one", when=when)]
  for kind, on in (("", negated(_global)), ("global_", _global)):
    heads, kv, dim = "heads", f"{kind}kv_heads", f"{kind}head_dim"
    params += [Param(a + "q_proj.weight", m + "query/kernel", f"({heads} {dim}) embed", f"embed {heads} {dim}",
                     when=when, on=on),
               Param(a + "q_norm.weight", m + "query_norm/scale", dim, dim, when=when, on=on),
               Param(a + "k_norm.weight", m + "key_norm/scale", dim, dim, when=when, on=all_of(on, own_kv)),
               Param(a + "k_proj.weight", m + "key/kernel", f"({kv} {dim}) embed", f"embed {kv} {dim}", when=when,
                     on=all_of(on, own_kv)),
               Param(a + "v_proj.weight", m + "value/kernel", f"({kv} {dim}) embed", f"embed {kv} {dim}", when=when,
                     on=all_of(on, own_kv, _has_value)),
               Param(a + "o_proj.weight", m + "out/kernel", f"embed ({heads} {dim})", f"{heads} {dim} embed",
                     when=when, on=on)]
  for width, on in (("mlp", negated(_wide)), ("wide_mlp", _wide)):
    for name, kernel, hf_axes, mt_axes in (("gate_proj", "wi_0", "W embed", "embed W"),
                                           ("up_proj", "wi_1", "W embed", "embed W"),
                                           ("down_proj", "wo", "embed W", "W embed")):
      for dense, where in ((lambda c: when(c) and not moe(c), "mlp/"), (moe, "mlp/moe_block/shared_experts/")):
        params.append(Param(f"{layer}mlp.{name}.weight", f"{mt}{where}{kernel}/kernel",
                            hf_axes.replace("W", width), mt_axes.replace("W", width), when=dense, on=on))
  params += [*sandwich_norms(layer, mt, when=when), *ple_layer(layer, mt, ple)]
  block = mt + "mlp/moe_block/MoeBlock_0/"
  params += [Param(layer + "router.scale", mt + "mlp/pre_forward_scale_2", "embed", "embed", when=moe),
             Param(layer + "router.per_expert_scale", block + "per_expert_scale", "experts", "experts", when=moe),
             Param(layer + "router.proj.weight", block + "gate/kernel", "experts embed", "embed experts", when=moe),
             *fused_experts(layer + "experts.", block, when=moe)]
  params += [Param(f"{layer}{norm}.weight", f"{mt}mlp/{norm}/scale", "embed", "embed", when=moe) for norm in
             ("post_feedforward_layernorm_1", "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2")]
  return (scaled_embedding(hf + "embed_tokens.weight", when=when), *params,
          Param(hf + "norm.weight", "decoder/decoder_norm/scale", "embed", "embed", when=when), *ple_model(hf, ple))


GEMMA4 = Family(
    name="gemma4",
    architectures=("Gemma4ForConditionalGeneration", "Gemma4ForCausalLM"),
    model_name_prefixes=("gemma4-",),
    sizes=gemma4_sizes,
    params=(*vision_tower(), *_text("model.language_model.", nested), *_text("model.", lambda c: not nested(c)),
            PROJECTOR),
    stacks=(Stack(scanned="scanned_blocks", block=PERIOD, member="layers_{j}", remainder="layers_remainder",
                  nested=(("local_layers", PERIOD - 1), ("global_layer", 1))), VISION),
    hf_config=text_only_hf_config("Gemma4ForCausalLM", "gemma4_text"),
    scan_refused=lambda c: _small(c) and ("MaxText's gemma4 E2B/E4B decoder (gemma4_small) threads per-layer "
                                         "embeddings and KV sharing through its layer loop, which is incompatible "
                                         "with nn.scan") or None,
)
