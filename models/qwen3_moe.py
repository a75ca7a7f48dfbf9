"""Qwen3 MoE: Qwen3's attention (per-head q/k RMSNorm) with routed experts under moe_block."""
from models.decoder import decoder_params, moe_sizes, routed_experts
from models.spec import Family

QWEN3_MOE = Family(
    name="qwen3-moe",
    architectures=("Qwen3MoeForCausalLM",),
    model_name_prefixes=("qwen3-30b-a3b", "qwen3-235b-a22b", "qwen3-coder-480b-a35b"),
    sizes=moe_sizes,
    params=decoder_params(qk_norm=True, mlp=routed_experts("mlp", "moe_block")),
)
