"""Mixtral: Llama-style attention (query scaled by 1/sqrt(head_dim)) with routed experts
(w1 = gate, w3 = up, w2 = down) under MaxText's MoeBlock_0."""
from models.decoder import decoder_params, moe_sizes, routed_experts
from models.spec import Family
from transforms.tensor_ops import Scale

MIXTRAL = Family(
    name="mixtral",
    architectures=("MixtralForCausalLM",),
    model_name_prefixes=("mixtral-",),
    sizes=moe_sizes,
    params=decoder_params(query_ops=(Scale("query_scale"),),
                          mlp=routed_experts("block_sparse_moe", "MoeBlock_0", names=("w1", "w3", "w2"))),
)
