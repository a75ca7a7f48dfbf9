"""DeepSeek V2, V3 and V3.2: multi-head latent attention (MLA) and a DeepSeek MoE block.

MaxText keeps the first `first_k_dense_replace` layers (a dense MLP) and the MoE layers in two
containers, decoder/dense_layers and decoder/moe_layers, each scanned on its own. Its converter
only transposes and splits head axes here: no RoPE reordering (MLA's rope part of q/k keeps HF's
order) and no folded query scale, so both directions are pure layout. Layers past
num_hidden_layers (the multi-token-prediction layer of V3/V3.2 checkpoints, model.layers.61) are
not in MaxText's model and end up in plan.unused.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from models.decoder import BLOCK, EMBEDDING, FINAL_NORM, LAYER, LM_HEAD, gated_mlp, layer_norms, routed_experts
from models.spec import Config, Family, Param, Stack

ATTN, MT_ATTN = LAYER + "self_attn.", BLOCK + "self_attention/"
MOE = "DeepSeekMoeBlock_0"


def _dense_layers(config: Config) -> int:
  """How many leading layers have a dense MLP (V3.2 configs may say it only as mlp_layer_types)."""
  if "first_k_dense_replace" in config:
    return config["first_k_dense_replace"]
  types = config.get("mlp_layer_types") or []
  return next((i for i, t in enumerate(types) if t != "dense"), len(types))


STACKS = (
    Stack(name="dense_layers", scanned="dense_layers", unscanned="dense_layers_{i}", stop=_dense_layers),
    Stack(name="moe_layers", scanned="moe_layers", unscanned="moe_layers_{i}", start=_dense_layers),
)


def deepseek_sizes(config: Config) -> dict[str, Any]:
  """MLA's ranks and head widths, the dense MLP, and routed + shared experts."""
  rope, nope, v = config["qk_rope_head_dim"], config["qk_nope_head_dim"], config["v_head_dim"]
  sizes = {
      "layers": config["num_hidden_layers"],
      "embed": config["hidden_size"],
      "vocab": config["vocab_size"],
      "heads": config["num_attention_heads"],
      "mlp": config["intermediate_size"],
      "experts": config["n_routed_experts"],
      "moe_mlp": config["moe_intermediate_size"],
      "shared_mlp": config["n_shared_experts"] * config["moe_intermediate_size"],
      "q_lora": config.get("q_lora_rank") or 0,
      "kv_lora": config["kv_lora_rank"],
      "qk_head": nope + rope,  # query/key per head: [nope | rope]
      "kv_a": config["kv_lora_rank"] + rope,  # kv_a_proj_with_mqa: [latent | shared rope key]
      "kv_head": nope + v,  # kv_b_proj per head: [key nope | value]
      "v_head": v,
  }
  if "index_n_heads" in config:
    sizes.update(index_heads=config["index_n_heads"], index_head_dim=config["index_head_dim"])
  return sizes


def _q_lora(config: Config) -> bool:
  return bool(config.get("q_lora_rank"))


def _attention(stack: str, indexer: bool) -> list[Param]:
  """MLA: the query directly (q_lora_rank 0/null, V2-Lite) or through a low-rank q_a/q_b pair."""
  p = lambda hf, mt, hf_axes, mt_axes, **kw: Param(ATTN + hf, MT_ATTN + mt, hf_axes, mt_axes, stack=stack, **kw)
  params = [
      p("q_proj.weight", "query/kernel", "(heads qk_head) embed", "embed heads qk_head",
        when=lambda c: not _q_lora(c)),
      p("q_a_proj.weight", "wq_a/kernel", "q_lora embed", "embed q_lora", when=_q_lora),
      p("q_a_layernorm.weight", "q_norm/scale", "q_lora", "q_lora", when=_q_lora),
      p("q_b_proj.weight", "wq_b/kernel", "(heads qk_head) q_lora", "q_lora heads qk_head", when=_q_lora),
      p("kv_a_proj_with_mqa.weight", "wkv_a/kernel", "kv_a embed", "embed kv_a"),
      p("kv_a_layernorm.weight", "kv_norm/scale", "kv_lora", "kv_lora"),
      p("kv_b_proj.weight", "wkv_b/kernel", "(heads kv_head) kv_lora", "kv_lora heads kv_head"),
      p("o_proj.weight", "out/kernel", "embed (heads v_head)", "heads v_head embed"),
  ]
  if indexer:  # V3.2's lightning indexer, which picks the keys each query attends to
    params += [
        p("indexer.wq_b.weight", "indexer/wq_b/kernel", "(index_heads index_head_dim) q_lora",
          "q_lora index_heads index_head_dim"),
        p("indexer.wk.weight", "indexer/wk/kernel", "index_head_dim embed", "embed index_head_dim"),
        p("indexer.k_norm.weight", "indexer/k_norm/scale", "index_head_dim", "index_head_dim"),
        p("indexer.k_norm.bias", "indexer/k_norm/bias", "index_head_dim", "index_head_dim"),
        p("indexer.weights_proj.weight", "indexer/weights_proj/kernel", "index_heads embed", "embed index_heads"),
    ]
  return params


def _moe(routing_bias: bool) -> list[Param]:
  """HF's MoE module order: routed experts, the router (with V3's routing bias), shared experts."""
  router, *experts = (dataclasses.replace(p, stack="moe_layers") for p in routed_experts("mlp", f"{MOE}/MoeBlock_0"))
  bias = [Param(LAYER + "mlp.gate.e_score_correction_bias", f"{BLOCK}{MOE}/MoeBlock_0/gate/bias", "experts",
                "experts", stack="moe_layers")] if routing_bias else []
  shared, mt_shared = LAYER + "mlp.shared_experts.", f"{BLOCK}{MOE}/shared_experts/"
  return [*experts, router, *bias,
          *(Param(f"{shared}{hf}.weight", f"{mt_shared}{mt}/kernel", hf_axes, mt_axes, stack="moe_layers")
            for hf, mt, hf_axes, mt_axes in (("gate_proj", "wi_0", "shared_mlp embed", "embed shared_mlp"),
                                             ("up_proj", "wi_1", "shared_mlp embed", "embed shared_mlp"),
                                             ("down_proj", "wo", "embed shared_mlp", "shared_mlp embed")))]


def deepseek_params(routing_bias: bool, indexer: bool = False) -> tuple[Param, ...]:
  """HF module order: embedding; per layer attention, MLP (dense or MoE), norms; final norm, lm_head."""
  dense_mlp = [dataclasses.replace(p, stack="dense_layers") for p in gated_mlp()]
  return (
      EMBEDDING,
      *_attention("dense_layers", indexer), *dense_mlp, *layer_norms("dense_layers"),
      *_attention("moe_layers", indexer), *_moe(routing_bias), *layer_norms("moe_layers"),
      FINAL_NORM,
      LM_HEAD,
  )


DEEPSEEK2 = Family(name="deepseek2", architectures=("DeepseekV2ForCausalLM",), model_name_prefixes=("deepseek2-",),
                   sizes=deepseek_sizes, params=deepseek_params(routing_bias=False), stacks=STACKS)
# Kimi K2 is DeepSeek-V3's architecture (its int4 experts: transforms/packed_int4.py).
DEEPSEEK3 = Family(name="deepseek3", architectures=("DeepseekV3ForCausalLM",),
                   model_name_prefixes=("deepseek3-", "kimi-k2-"),
                   sizes=deepseek_sizes, params=deepseek_params(routing_bias=True), stacks=STACKS)
DEEPSEEK32 = Family(name="deepseek3.2", architectures=("DeepseekV32ForCausalLM",),
                    model_name_prefixes=("deepseek3.2-",), sizes=deepseek_sizes,
                    params=deepseek_params(routing_bias=True, indexer=True), stacks=STACKS)
