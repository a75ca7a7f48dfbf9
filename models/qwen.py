"""Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm): the shared block with no value ops."""
from models.decoder import BLOCK, LAYER, decoder_params, decoder_sizes
from models.spec import Family, Param

_ATTN = LAYER + "self_attn."
_MT_ATTN = BLOCK + "self_attention/"

QWEN25 = Family(
    name="qwen2.5",
    architectures=("Qwen2ForCausalLM",),
    model_name_prefixes=("qwen2.5-",),
    sizes=decoder_sizes,
    params=decoder_params() + (
        Param(_ATTN + "q_proj.bias", _MT_ATTN + "query/bias", "(heads head_dim)", "heads head_dim"),
        Param(_ATTN + "k_proj.bias", _MT_ATTN + "key/bias", "(kv_heads head_dim)", "kv_heads head_dim"),
        Param(_ATTN + "v_proj.bias", _MT_ATTN + "value/bias", "(kv_heads head_dim)", "kv_heads head_dim"),
    ),
)

QWEN3 = Family(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_name_prefixes=("qwen3-",),
    sizes=decoder_sizes,
    params=decoder_params() + (
        Param(_ATTN + "q_norm.weight", _MT_ATTN + "query_norm/scale", "head_dim", "head_dim"),
        Param(_ATTN + "k_norm.weight", _MT_ATTN + "key_norm/scale", "head_dim", "head_dim"),
    ),
)
