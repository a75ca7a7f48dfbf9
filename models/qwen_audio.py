"""The audio tower of Qwen3-Omni's thinker (a Whisper-style encoder: three stride-2 Conv2d over the
mel spectrogram, a linear into the encoder width, pre-norm attention layers with biases, then a
two-layer projector into the text width), as MaxText's Qwen3OmniAudioEncoder_0 and
Qwen3OmniAudioProjector_0 hold it, never scanned.

MaxText's qwen3-omni model has the audio encoder whenever use_audio (its default), also without
use_multimodal; going back, a text-only conversion writes the text model only. Conv kernels go from
torch's (out, in, h, w) to flax's (h, w, in, out), heads are split out, linear kernels transpose.
"""
from __future__ import annotations

from typing import Any

from models.decoder import linear, tower_stack
from models.spec import Config, Param, Stack

ENCODER, PROJECTOR = "Qwen3OmniAudioEncoder_0", "Qwen3OmniAudioProjector_0"
CONV_KERNEL = 3  # transformers' Qwen3OmniMoeAudioEncoder: Conv2d(..., 3, 2, padding=1), three times


def audio_config(config: Config) -> Config:
  return config["thinker_config"]["audio_config"]


def with_audio(config: Config) -> bool:
  """To MaxText always (its model has the encoder); back to HF only with use_multimodal."""
  return config.get("direction") != "to_huggingface" or bool(config.get("use_multimodal"))


def audio_sizes(config: Config) -> dict[str, Any]:
  audio = audio_config(config)
  width, heads, freq = audio["d_model"], audio["encoder_attention_heads"], audio["num_mel_bins"]
  for _ in range(3):  # each stride-2 conv halves the mel axis (rounding up)
    freq = (freq + 1) // 2
  channels = audio["downsample_hidden_size"]
  return {"audio": width, "audio_in": width, "audio_heads": heads, "audio_head_dim": width // heads,
          "audio_mlp": audio["encoder_ffn_dim"], "audio_out": audio["output_dim"], "conv_ch": channels,
          "conv_ch_in": channels, "conv_flat": channels * freq, "kernel_h": CONV_KERNEL, "kernel_w": CONV_KERNEL,
          "one": 1}


def audio_stack() -> Stack:
  return tower_stack("audio", ENCODER, "layers", lambda c: audio_config(c)["encoder_layers"])


def _layer_norm(hf: str, mt: str, **kw: Any) -> list[Param]:
  return [Param(hf + ".weight", mt + "/scale", "audio", "audio", **kw),
          Param(hf + ".bias", mt + "/bias", "audio", "audio", **kw)]


def audio_params(hf: str) -> tuple[Param, ...]:
  """The tower under the HF prefix `hf` ("thinker.audio_tower."), in its module order."""
  layer, mt, enc = hf + "layers.{layer}.", "audio_encoder/{layers}/", f"audio_encoder/{ENCODER}/"
  kw, head = dict(when=with_audio, stack="audio"), "(audio_heads audio_head_dim)"
  params = []
  for proj, name in (("k", "key"), ("v", "value"), ("q", "query")):
    params += linear(f"{layer}self_attn.{proj}_proj", f"{mt}self_attention_audio/{name}", f"{head} audio",
                      "audio audio_heads audio_head_dim", (head, "audio_heads audio_head_dim"), **kw)
  params += [*linear(layer + "self_attn.out_proj", mt + "self_attention_audio/out", f"audio {head}",
                      "audio_heads audio_head_dim audio", "audio", **kw),
             *_layer_norm(layer + "self_attn_layer_norm", mt + "input_layer_norm", **kw),
             *linear(layer + "fc1", mt + "AudioMLP/wi", "audio_mlp audio", "audio audio_mlp", "audio_mlp", **kw),
             *linear(layer + "fc2", mt + "AudioMLP/wo", "audio audio_mlp", "audio_mlp audio", "audio", **kw),
             *_layer_norm(layer + "final_layer_norm", mt + "post_attention_layer_norm", **kw),
             *_layer_norm(hf + "ln_post", enc + "layernorm_post", when=with_audio)]
  for i, inputs in ((1, "one"), (2, "conv_ch_in"), (3, "conv_ch_in")):
    params += linear(f"{hf}conv2d{i}", f"{enc}conv2d{i}", f"conv_ch {inputs} kernel_h kernel_w",
                      f"kernel_h kernel_w {inputs} conv_ch", "conv_ch", when=with_audio)
  projector = f"audio_encoder/{PROJECTOR}/"
  return (*params,
          *linear(hf + "conv_out", enc + "conv_out", "audio conv_flat", "conv_flat audio", None, when=with_audio),
          *linear(hf + "proj1", projector + "proj1", "audio audio_in", "audio_in audio", "audio", when=with_audio),
          *linear(hf + "proj2", projector + "proj2", "audio_out audio", "audio audio_out", "audio_out",
                   when=with_audio))
