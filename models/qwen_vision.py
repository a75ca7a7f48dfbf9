"""The vision tower Qwen3-VL, Qwen3-Omni and Qwen3.5 share: a ViT over 3-D patches (a Conv3d patch
embedding, learned positions, fused qkv), a patch merger into the text width, and, in Qwen3-VL and
Omni, one deepstack merger per `deepstack_visual_indexes` entry.

MaxText keeps it under vision_encoder/<encoder>/ (blocks_{i}, merger_{k}, patch_embed,
pos_embed_interpolate) and vision_encoder/<projector>/merger, never scanned, with names of its
own per family (Qwen3VLVisionEncoder_0, Qwen3OmniMoeVisionEncoder_0, Qwen3_5MoeVisionEncoder_0).
Only layouts change: the patch kernel goes (out, in, t, h, w) -> (t, h, w, in, out), qkv splits
into query/key/value with heads split out, linear kernels transpose.
"""
from __future__ import annotations

from typing import Any

from models.decoder import linear, tower_stack
from models.spec import Config, Param, Stack

# A patch merger's HF names: its LayerNorm, its two linears, and the list of deepstack mergers.
VL_MERGER = ("norm", "linear_fc1", "linear_fc2", "deepstack_merger_list")
OMNI_MERGER = ("ln_q", "mlp.0", "mlp.2", "merger_list")


def vision_config(config: Config) -> Config | None:
  return config.get("thinker_config", config).get("vision_config")


def multimodal(config: Config) -> bool:
  return bool(config.get("use_multimodal")) and vision_config(config) is not None


def deepstack_refuses_scan(config: Config) -> str | None:
  """MaxText injects deepstack features layer by layer, which its scanned decoder cannot."""
  if (vision_config(config) or {}).get("deepstack_visual_indexes"):
    return ("MaxText's model cannot run scanned layers (deepstack visual embedding injection requires "
            "scan_layers=False)")
  return None


def vision_sizes(config: Config) -> dict[str, Any]:
  vision = vision_config(config)
  if not vision:
    return {}
  width, heads, patch = vision["hidden_size"], vision["num_heads"], vision["patch_size"]
  merged = width * vision["spatial_merge_size"] ** 2
  return {"vit": width, "vit_mlp": vision["intermediate_size"], "vit_heads": heads, "vit_head_dim": width // heads,
          "three": 3, "channels": vision["in_channels"], "temporal": vision["temporal_patch_size"], "patch_h": patch,
          "patch_w": patch, "positions": vision["num_position_embeddings"], "merged": merged, "merged_in": merged,
          "vit_out": vision["out_hidden_size"]}


def vision_stacks(encoder: str) -> tuple[Stack, ...]:
  return (tower_stack("vision", encoder, "blocks", lambda c: vision_config(c)["depth"]),
          tower_stack("deepstack", encoder, "merger", lambda c: len(vision_config(c)["deepstack_visual_indexes"])))


def _merger(hf: str, mt: str, names: tuple[str, ...], norm: str, **kw: Any) -> list[Param]:
  """LayerNorm (over `norm`: the ViT width before the spatial merge, the merged width after) and a
  two-layer MLP into the text width."""
  ln, fc1, fc2 = names[:3]
  return [Param(f"{hf}{ln}.weight", mt + "ln_q/scale", norm, norm, **kw),
          Param(f"{hf}{ln}.bias", mt + "ln_q/bias", norm, norm, **kw),
          *linear(hf + fc1, mt + "mlp_0", "merged merged_in", "merged_in merged", "merged", **kw),
          *linear(hf + fc2, mt + "mlp_2", "vit_out merged", "merged vit_out", "vit_out", **kw)]


def vision_params(hf: str, encoder: str, projector: str, names: tuple[str, ...] = VL_MERGER,
                  deepstack_first: bool = False) -> tuple[Param, ...]:
  """The tower under the HF prefix `hf` ("model.visual."), in its module order (Omni registers the
  deepstack mergers first); every parameter applies with use_multimodal only."""
  mt, block, kw = f"vision_encoder/{encoder}/", hf + "blocks.{layer}.", dict(when=multimodal, stack="vision")
  blocks, heads = "vision_encoder/{layers}/", "vit_heads vit_head_dim"
  params = [Param(block + f"norm{i}.{hf_name}", f"{blocks}ln{i}/{name}", "vit", "vit", **kw)
            for i in (1, 2) for hf_name, name in (("weight", "scale"), ("bias", "bias"))]
  for i, name in enumerate(("query", "key", "value")):  # one fused qkv: part i of its leading `three`
    params += linear(block + "attn.qkv", f"{blocks}attn/attn/{name}", f"(three {heads}) vit", f"vit {heads}",
                     (f"(three {heads})", heads), part=("three", i), **kw)
  params += [*linear(block + "attn.proj", blocks + "attn/attn/out", f"vit ({heads})", f"{heads} vit", "vit", **kw),
             *linear(block + "mlp.linear_fc1", blocks + "mlp", "vit_mlp vit", "vit vit_mlp", "vit_mlp", **kw),
             *linear(block + "mlp.linear_fc2", blocks + "mlp_out", "vit vit_mlp", "vit_mlp vit", "vit", **kw)]
  embed = [Param(hf + "patch_embed.proj.weight", mt + "patch_embed/proj/kernel",
                 "vit channels temporal patch_h patch_w", "temporal patch_h patch_w channels vit", when=multimodal),
           Param(hf + "patch_embed.proj.bias", mt + "patch_embed/proj/bias", "vit", "vit", when=multimodal),
           Param(hf + "pos_embed.weight", mt + "pos_embed_interpolate/pos_embed", "positions vit", "positions vit",
                 when=multimodal)]
  merger = _merger(hf + "merger.", f"vision_encoder/{projector}/merger/", names, "vit", when=multimodal)
  deepstack = _merger(f"{hf}{names[3]}.{{layer}}.", "vision_encoder/{layers}/", names, "merged", when=multimodal,
                      stack="deepstack")
  if deepstack_first:
    return (*deepstack, *embed, *params, *merger)
  return (*embed, *params, *merger, *deepstack)
