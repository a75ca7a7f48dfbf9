"""Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm): the shared block with no value ops."""
from models.decoder import decoder_params, decoder_sizes
from models.spec import Family

QWEN25 = Family(
    name="qwen2.5",
    architectures=("Qwen2ForCausalLM",),
    model_name_prefixes=("qwen2.5-",),
    sizes=decoder_sizes,
    params=decoder_params(attention_bias=True),
)

QWEN3 = Family(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_name_prefixes=("qwen3-",),
    sizes=decoder_sizes,
    params=decoder_params(qk_norm=True),
)
