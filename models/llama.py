"""Llama 3.1: q and k go from HF's rotate-half RoPE order to MaxText's interleaved pairs, and the
query carries MaxText's 1/sqrt(head_dim) attention scale."""
from models.decoder import decoder_params, decoder_sizes
from models.spec import Family
from transforms.tensor_ops import RopeInterleave, Scale

LLAMA31 = Family(
    name="llama3.1",
    architectures=("LlamaForCausalLM",),
    model_name_prefixes=("llama3.1-",),
    sizes=decoder_sizes,
    params=decoder_params(query_ops=(RopeInterleave(), Scale("query_scale")), key_ops=(RopeInterleave(),)),
    ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)
