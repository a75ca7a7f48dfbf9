"""Manifold-constrained hyper-connections (mHC, DeepSeek V4): the residual stream is `hc` copies of
the hidden state, mixed around each attention and MLP block by weights computed from all of them.

HF keeps one block's mixing weights in three tensors whose first axis runs pre | post | res
(`fn` [hc + hc + hc*hc, hc*embed], `base` [same], `scale` [3]); MaxText splits each into its three
arrays (`segment`s), transposing `fn`. MaxText's model also has an RMSNorm scale (`mhc_norm`) that
HF's does not (the norm is unweighted there): ones, and nothing on the way back. Every HF tensor
here is float32 (`hf_dtype`), which the way back restores.
"""
from __future__ import annotations

from typing import Any

from models.spec import Config, Param

ROWS = ("hc", "hc", "hc_res")  # pre, post, res rows of fn and base
SCALES = ("one", "one", "one")
F32 = "F32"


def hc_sizes(config: Config) -> dict[str, Any]:
  """`hc` streams of `embed` each; res mixes every stream with every other."""
  hc, embed = config["hc_mult"], config["hidden_size"]
  return {"hc": hc, "hc2": hc, "hc_res": hc * hc, "hc_embed": hc * embed, "one": 1}


def hyper_connection(hf: str, mt: str, **kw: Any) -> tuple[Param, ...]:
  """One block's mHC: HF `hf`fn, `hf`base, `hf`scale <-> MaxText `mt`/mhc_norm, pre_alpha, ..."""
  params = [Param(hf + "fn" + ":mhc_norm", f"{mt}/mhc_norm/scale", "hc_embed", "hc_embed", fill=1.0, **kw)]
  for i, kind in enumerate(("pre", "post", "res")):
    rows = "hc_res" if kind == "res" else "hc"
    params += [
        Param(hf + "fn", f"{mt}/{kind}_alpha", f"{rows} hc_embed", f"hc_embed {rows}", segment=(i, ROWS),
              hf_dtype=F32, **kw),
        Param(hf + "base", f"{mt}/{kind}_beta", "(hc hc2)" if kind == "res" else "hc",
              "hc hc2" if kind == "res" else "hc", segment=(i, ROWS), hf_dtype=F32, **kw),
        Param(hf + "scale", f"{mt}/{kind}_alpha_scale", "one", "one", segment=(i, SCALES), hf_dtype=F32, **kw),
    ]
  return tuple(params)


def hc_head(fn: str, base: str, scale: str, **kw: Any) -> tuple[Param, ...]:
  """The head's mHC, which folds the `hc` streams into one before the final norm."""
  return (Param(fn, "decoder/hc_head/hc_fn", "hc hc_embed", "hc_embed hc", hf_dtype=F32, **kw),
          Param(base, "decoder/hc_head/hc_base", "hc", "hc", hf_dtype=F32, **kw),
          Param(scale, "decoder/hc_head/hc_scale", "one", "one", hf_dtype=F32, **kw))
