"""DeepSeek V4 (V4-Flash, MaxText deepseek4-284b): models/deepseek4_layers.py's decoder, the token
embedding, the head's hyper-connection, final norm and lm_head (`head.weight` in both namings).

MaxText keeps the hash-routed first layers unscanned (decoder/layers_0..2, experts on axis 0) and,
scanned, the rest as decoder/scanned_blocks/layers_0 (HF layers 3, 5, ...: HCA) and layers_1 (4, 6,
...: CSA) on axis 1; unscanned, every layer is decoder/layers_N. The Hub's checkpoints also hold an
MTP layer (mtp.0.*) that MaxText's model lacks: reported as not used on the way there; the way back
writes none and a config that says so (deepseek4_layers.without_mtp).
"""
from __future__ import annotations

from models.deepseek4_layers import deepseek4_sizes, hash_layers, hub_named, layer_params, scan_refused, without_mtp
from models.hyper_connections import hc_head
from models.spec import Family, Param, Stack

DEEPSEEK4 = Family(
    name="deepseek4",
    architectures=("DeepseekV4ForCausalLM",),
    model_name_prefixes=("deepseek4-",),
    sizes=deepseek4_sizes,
    params=hub_named((
        Param("model.embed_tokens.weight", "token_embedder/embedding", "vocab embed", "vocab embed"),
        *layer_params("hash_layers", hashed=True),
        *layer_params("layers", hashed=False),
        *hc_head("model.hc_head.hc_fn", "model.hc_head.hc_base", "model.hc_head.hc_scale"),
        Param("model.norm.weight", "decoder/decoder_norm/scale", "embed", "embed"),
        Param("head.weight", "decoder/logits_dense/kernel", "vocab embed", "embed vocab"),
    )),
    stacks=(Stack(name="hash_layers", unscanned="layers_{i}", stop=hash_layers, scans=False),
            Stack(name="layers", scanned="scanned_blocks", unscanned="layers_{layer}", start=hash_layers, block=2,
                  member="layers_{j}")),
    hf_config=without_mtp,
    scan_refused=scan_refused,
)
