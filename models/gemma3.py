"""Gemma3: Gemma2's block with per-head q/k RMSNorm (no query scale), scanned in blocks of 6
(5 local + 1 global) with the leftover layers unstacked under layers_remainder; norm scales stay
float32 next to bf16 weights. Gemma3ForConditionalGeneration keeps the text model under
`language_model.model.`; with use_multimodal the SigLIP tower and projector come along, otherwise
they are reported unused and the way back writes a text-only Gemma3ForCausalLM.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import ml_dtypes

from models.decoder import decoder_sizes
from models.gemma import PLUS_ONE, layer_params, text_params
from models.multimodal import multimodal, nested, text_only_hf_config
from models.spec import Config, Family, Param, Stack


def gemma3_sizes(config: Config) -> dict[str, Any]:
  """Text sizes (embedding scale rounded to bf16, as MaxText's converter and HF both do), plus the
  vision tower's when the config has one."""
  sizes = decoder_sizes(config.get("text_config", config))
  sizes["embed_scale"] = float(ml_dtypes.bfloat16(math.sqrt(sizes["embed"])))
  vision = config.get("vision_config")
  if vision:
    heads, patch = vision["num_attention_heads"], vision["patch_size"]
    sizes.update(vit=vision["hidden_size"], vit_mlp=vision["intermediate_size"], vit_heads=heads,
                 vit_head_dim=vision["hidden_size"] // heads, channels=vision.get("num_channels", 3),
                 patch_h=patch, patch_w=patch, positions=(vision["image_size"] // patch) ** 2, one=1)
  return sizes


def _gemma3_text(hf: str, **kw: Any) -> tuple[Param, ...]:
  layer = layer_params(hf + "layers.{layer}.", "decoder/{layers}/", qk_norm=True, norm_dtype="float32", **kw)
  return text_params(hf, layer, norm_dtype="float32", **kw)


def _vision() -> tuple[Param, ...]:
  """SigLIP tower (never scanned in MaxText) and the projector, as MaxText's Gemma3 names them."""
  vt, enc = "vision_tower.", "vision_encoder/Gemma3VisionEncoderLayer_0/"
  hf, mt = vt + "encoder.layers.{layer}.", enc + "{layers}/"
  att, mat = hf + "self_attn.", mt + "MultiHeadDotProductAttention_0/"
  kw = dict(when=multimodal, stack="vision")
  params = [Param(vt + "embeddings.patch_embedding.weight", enc + "embedding/kernel", "vit channels patch_h patch_w",
                  "patch_h patch_w channels vit", when=multimodal),
            Param(vt + "embeddings.patch_embedding.bias", enc + "embedding/bias", "vit", "vit", when=multimodal),
            Param(vt + "embeddings.position_embedding.weight", enc + "pos_embedding", "(one positions) vit",
                  "one positions vit", when=multimodal),
            Param(hf + "layer_norm1.weight", mt + "LayerNorm_0/scale", "vit", "vit", **kw),
            Param(hf + "layer_norm1.bias", mt + "LayerNorm_0/bias", "vit", "vit", **kw)]
  for proj, name in (("k", "key"), ("v", "value"), ("q", "query")):  # SigLIP's module order
    params += [Param(f"{att}{proj}_proj.weight", f"{mat}{name}/kernel", "(vit_heads vit_head_dim) vit",
                     "vit vit_heads vit_head_dim", **kw),
               Param(f"{att}{proj}_proj.bias", f"{mat}{name}/bias", "(vit_heads vit_head_dim)",
                     "vit_heads vit_head_dim", **kw)]
  params += [Param(att + "out_proj.weight", mat + "out/kernel", "vit (vit_heads vit_head_dim)",
                   "vit_heads vit_head_dim vit", **kw),
             Param(att + "out_proj.bias", mat + "out/bias", "vit", "vit", **kw),
             Param(hf + "layer_norm2.weight", mt + "LayerNorm_1/scale", "vit", "vit", **kw),
             Param(hf + "layer_norm2.bias", mt + "LayerNorm_1/bias", "vit", "vit", **kw),
             Param(hf + "mlp.fc1.weight", mt + "MlpBlockViT_0/Dense_0/kernel", "vit_mlp vit", "vit vit_mlp", **kw),
             Param(hf + "mlp.fc1.bias", mt + "MlpBlockViT_0/Dense_0/bias", "vit_mlp", "vit_mlp", **kw),
             Param(hf + "mlp.fc2.weight", mt + "MlpBlockViT_0/Dense_1/kernel", "vit vit_mlp", "vit_mlp vit", **kw),
             Param(hf + "mlp.fc2.bias", mt + "MlpBlockViT_0/Dense_1/bias", "vit", "vit", **kw)]
  post, proj = enc + "Transformer/encoder_norm/", "vision_encoder/VisionEmbedder_0/"
  mm = "multi_modal_projector."
  return (*params,
          Param(vt + "post_layernorm.weight", post + "scale", "vit", "vit", when=multimodal),
          Param(vt + "post_layernorm.bias", post + "bias", "vit", "vit", when=multimodal),
          Param(mm + "mm_input_projection_weight", proj + "mm_input_projection/w", "vit embed", "vit embed",
                when=multimodal),
          Param(mm + "mm_soft_emb_norm.weight", proj + "mm_soft_embedding_norm/scale", "vit", "vit", ops=PLUS_ONE,
                dtype="float32", when=multimodal))


GEMMA3 = Family(
    name="gemma3",
    architectures=("Gemma3ForConditionalGeneration", "Gemma3ForCausalLM"),
    model_name_prefixes=("gemma3-",),
    sizes=gemma3_sizes,
    params=(*_vision(), *_gemma3_text("language_model.model.", when=nested),
            *_gemma3_text("model.", when=lambda c: not nested(c))),
    stacks=(Stack(block=6, member="layers_{j}", remainder="layers_remainder"),
            # A block longer than any tower: every layer is a "remainder", i.e. never scanned.
            Stack(name="vision", scanned="Transformer", unscanned="Transformer/encoderblock_{i}", block=sys.maxsize,
                  member="encoderblock_{j}", remainder="Transformer",
                  stop=lambda c: c["vision_config"]["num_hidden_layers"])),
    hf_config=text_only_hf_config("Gemma3ForCausalLM", "gemma3_text"),
    # MaxText converts Gemma3 only with eager loading (its param mapping needs transformers' names).
    eager_load=True,
)
