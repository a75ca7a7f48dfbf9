"""Gemma 4's vision tower and its projector into the text model, as MaxText's Gemma4VisionEncoderLayer_0
and Gemma4VisionProjector_0 name them: converted with use_multimodal=true only, never scanned
(layer_{i} in both layouts). HF's linear layers sit under `.linear` (transformers' clippable linear);
values are copied as they are (norms without offset, like the text model).
"""
from __future__ import annotations

from typing import Any

from models.multimodal import multimodal
from models.spec import Config, Param, Stack

ENCODER = "vision_encoder/Gemma4VisionEncoderLayer_0/"
STACK = Stack(name="vision", unscanned="layer_{i}", scans=False, stop=lambda c: c["vision_config"]["num_hidden_layers"])


def vision_sizes(vision: Config) -> dict[str, Any]:
  """The tower's named axes: width, MLP, heads, the patch (3 x patch x patch) and position-table sizes."""
  return {"vit": vision["hidden_size"], "vit_mlp": vision["intermediate_size"],
          "vit_heads": vision["num_attention_heads"], "vit_kv_heads": vision["num_key_value_heads"],
          "vit_head_dim": vision["head_dim"], "patch": 3 * vision["patch_size"] ** 2,
          "positions": vision["position_embedding_size"], "two": 2}


def _standardized(config: Config) -> bool:
  return multimodal(config) and bool(config["vision_config"].get("standardize"))


def vision_tower() -> tuple[Param, ...]:
  """In HF module order: the standardization, the patch embedder, then each encoder layer."""
  vt, hf, mt = "model.vision_tower.", "model.vision_tower.encoder.layers.{layer}.", ENCODER + "{layers}/"
  kw = dict(when=multimodal, stack="vision")
  params = [Param(vt + "std_bias", ENCODER + "std_bias", "vit", "vit", when=_standardized),
            Param(vt + "std_scale", ENCODER + "std_scale", "vit", "vit", when=_standardized),
            Param(vt + "patch_embedder.position_embedding_table", ENCODER + "vision_entry/pos_emb_param",
                  "two positions vit", "positions two vit", when=multimodal),
            Param(vt + "patch_embedder.input_proj.weight", ENCODER + "vision_entry/input_projection/kernel",
                  "vit patch", "patch vit", when=multimodal)]
  for proj, name, heads in (("q", "query", "vit_heads"), ("k", "key", "vit_kv_heads"),
                            ("v", "value", "vit_kv_heads")):
    params.append(Param(f"{hf}self_attn.{proj}_proj.linear.weight", f"{mt}attention/{name}/kernel",
                        f"({heads} vit_head_dim) vit", f"vit {heads} vit_head_dim", **kw))
  params += [Param(hf + "self_attn.o_proj.linear.weight", mt + "attention/out/kernel", "vit (vit_heads vit_head_dim)",
                   "vit_heads vit_head_dim vit", **kw),
             Param(hf + "self_attn.q_norm.weight", mt + "attention/query_norm/scale", "vit_head_dim",
                   "vit_head_dim", **kw),
             Param(hf + "self_attn.k_norm.weight", mt + "attention/key_norm/scale", "vit_head_dim", "vit_head_dim",
                   **kw),
             Param(hf + "mlp.gate_proj.linear.weight", mt + "mlp/wi_0/kernel", "vit_mlp vit", "vit vit_mlp", **kw),
             Param(hf + "mlp.up_proj.linear.weight", mt + "mlp/wi_1/kernel", "vit_mlp vit", "vit vit_mlp", **kw),
             Param(hf + "mlp.down_proj.linear.weight", mt + "mlp/wo/kernel", "vit vit_mlp", "vit_mlp vit", **kw)]
  for hf_norm, mt_norm in (("input_layernorm", "pre_attention_norm"),
                           ("post_attention_layernorm", "post_attention_norm"),
                           ("pre_feedforward_layernorm", "pre_ffw_norm"),
                           ("post_feedforward_layernorm", "post_ffw_norm")):
    params.append(Param(f"{hf}{hf_norm}.weight", f"{mt}{mt_norm}/scale", "vit", "vit", **kw))
  return tuple(params)


# After the text model in HF module order: the projection of the tower's output into the text width.
PROJECTOR = Param("model.embed_vision.embedding_projection.weight", "vision_encoder/Gemma4VisionProjector_0/"
                  "projection/kernel", "embed vit", "vit embed", when=multimodal)
