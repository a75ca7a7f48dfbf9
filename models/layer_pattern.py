"""Per-layer facts of a decoder, read from config.json the way transformers reads them, for any family
whose layers differ: which layers attend globally (`layer_types`), which reuse an earlier layer's
keys and values (`num_kv_shared_layers`), and which override the model's sizes (`per_layer_config`).

MaxText's models hard-code their sliding/global patterns (Gemma 4: five local layers then one global;
OLMo 3: three then one), so a config that puts global layers elsewhere is refused here, in one line,
rather than converted into a checkpoint MaxText would run with the wrong attention.
"""
from __future__ import annotations

from typing import Any, Callable

from models.spec import Config
from transforms.errors import ConversionError

GLOBAL, SLIDING = "full_attention", "sliding_attention"


def text_config(config: Config) -> Config:
  """The language model's config: `text_config` of a multimodal model, else the config itself."""
  return config.get("text_config") or config


def layer_types(config: Config, period: int) -> list[str]:
  """`layer_types`, or when absent every `period`-th layer global (transformers' default)."""
  text = text_config(config)
  layers = text["num_hidden_layers"]
  types = text.get("layer_types") or [GLOBAL if (i + 1) % period == 0 else SLIDING for i in range(layers)]
  if len(types) != layers:
    raise ConversionError(f"config.json: layer_types lists {len(types)} layers but num_hidden_layers is {layers}")
  return list(types)


def global_period(config: Config, default: int) -> int:
  """The length of the repeating pattern: the first global layer's position + 1."""
  types = layer_types(config, default)
  return types.index(GLOBAL) + 1 if GLOBAL in types else default


def is_global(config: Config, layer: int, period: int) -> bool:
  return layer_types(config, period)[layer] == GLOBAL


def check_pattern(config: Config, periods: tuple[int, ...], model: str) -> int:
  """The period of a config whose layers follow MaxText's fixed pattern (period - 1 sliding layers,
  then one global, repeated; a shorter tail all sliding), for one of the `periods` MaxText knows."""
  period = global_period(config, periods[-1])
  period = period if period in periods else periods[-1]
  types = layer_types(config, period)
  wrong = next((i for i, t in enumerate(types) if (t == GLOBAL) != (i % period == period - 1)), None)
  if wrong is not None:
    raise ConversionError(
        f"config.json: layer_types has {types[wrong]} at layer {wrong}, but MaxText's {model} runs "
        f"{' or '.join(str(p - 1) for p in periods)} sliding-window layers then one global layer, repeating; "
        "its model would attend differently from this checkpoint's")
  return period


def per_layer(config: Config, layer: int, key: str) -> Any:
  """`key` for one layer: its `per_layer_config` override (keys are layer numbers, "5" or "05"), else
  the model's value."""
  text = text_config(config)
  for name, overrides in (text.get("per_layer_config") or {}).items():
    if int(name) == layer and overrides.get(key) is not None:
      return overrides[key]
  return text[key]


def uniform(config: Config, layers: list[int], key: str, model: str) -> Any:
  """The one value of `key` that all of `layers` share (MaxText sizes them with a single setting)."""
  values = {layer: per_layer(config, layer, key) for layer in layers}
  if len(set(values.values())) > 1:
    raise ConversionError(f"config.json: per_layer_config gives layers {sorted(values)} different {key} "
                          f"({sorted(set(values.values()))}); MaxText's {model} has one value for all of them")
  return next(iter(values.values()), text_config(config).get(key))


def first_kv_shared(config: Config) -> int:
  """The first layer that reuses an earlier layer's keys and values (the layer count when none do)."""
  text = text_config(config)
  layers, shared = text["num_hidden_layers"], text.get("num_kv_shared_layers") or 0
  if not 0 <= shared < layers:
    raise ConversionError(f"config.json: num_kv_shared_layers={shared} must be below num_hidden_layers={layers}")
  return layers - shared


def kv_shared(config: Config, layer: int) -> bool:
  """The layer has no key/value projections of its own (transformers' kv_sharing_modes "reuse")."""
  return layer >= first_kv_shared(config)


LayerTest = Callable[[Config, int], bool]


def all_of(*tests: LayerTest) -> LayerTest:
  """A `Param.on` that holds where every test does."""
  return lambda config, layer: all(t(config, layer) for t in tests)


def negated(test: LayerTest) -> LayerTest:
  return lambda config, layer: not test(config, layer)
