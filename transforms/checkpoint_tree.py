"""Where a MaxText checkpoint keeps its parameters, told from the checkpoint's own tree (never from flags).

A MaxText checkpoint item (`<dir>/<step>/items`) is an Orbax PyTree. Every parameter has a *model
path*, the same in every layout (`decoder/layers/mlp/wi_0/kernel`, `token_embedder/embedding`), and
sits inside one of these trees:

| tree                                  | a parameter is stored at               | the tree also holds            |
| ------------------------------------- | -------------------------------------- | ------------------------------ |
| Linen TrainState (training)           | `params/params/<model path>`           | `step`, `opt_state`            |
| Linen parameter-only (to_maxtext, generate_param_only_checkpoint) | `params/params/<model path>` | `step` |
| NNX TrainState (pure_nnx training)    | `params/params/<model path>[/value]`   | `step`, `opt_state`, `nnx_aux` |
| NNX parameter-only (generate_param_only_checkpoint with pure_nnx) | `<model path>/value` | nothing else |

`opt_state`, `nnx_aux` (NNX rng state) and `step` are never parameters: a reader of parameters
never opens them, so an optimizer state is never read. Layers are scanned when `_CHECKPOINT_METADATA`
says so (`custom_metadata.scan_layers`), else when the decoder holds a stacked container (`layers`,
`dense_layers`, ...) rather than numbered ones (`layers_0`, ...).

A LoRA adapter checkpoint (leaves such as `kernel_lora_a`) is recognised and its leaves are listed in
`lora` (stored paths; `layout.model_path` gives `decoder/layers/mlp/wi_0/kernel_lora_a`), so a caller
can read it with its own options; `require_model`, which every model reader calls, refuses it.

The reader (`transforms/orbax_reader.CheckpointReader.tree`) detects the tree once per checkpoint;
both directions (pipeline/plan_hf.py, pipeline/plan_maxtext.py) look parameters up by model path.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

from transforms.errors import ConversionError

PARAMS_PREFIX = "params/params/"
VALUE_SUFFIX = "/value"
# Top-level subtrees that never hold parameters.
NOT_PARAMETERS = ("opt_state", "nnx_aux")
STEP = "step"
# The roots of a MaxText model's module tree (models/*.py place every parameter under one of them).
MODEL_ROOTS = ("decoder", "token_embedder", "vision_encoder", "audio_encoder")
_SCANNED = re.compile(r"(\w+_)?layers|scanned_blocks")  # scanned_blocks: Gemma 4, DeepSeek V4
_UNSCANNED = re.compile(r"(\w+_)?layers_\d+")
_LORA = re.compile(r"(\w+_)?lora_[ab]")


@dataclasses.dataclass(frozen=True)
class TreeLayout:
  """How a tree stores each parameter: at `prefix` + model path + `suffix`; `step` says whether the
  tree has the TrainState's `step` leaf (Linen trees do, NNX parameter-only trees do not)."""
  name: str
  prefix: str
  suffix: str
  step: bool

  def stored(self, model_path: str) -> str:
    return self.prefix + model_path + self.suffix

  def model_path(self, stored: str) -> str | None:
    """The model path of a stored leaf, or None when the leaf is not one of this layout's parameters."""
    if not stored.startswith(self.prefix) or not stored.endswith(self.suffix):
      return None
    return stored[len(self.prefix):len(stored) - len(self.suffix)] or None


# The parameter-only trees MaxText writes: to_maxtext and generate_param_only_checkpoint (Linen) ...
LINEN = TreeLayout("linen", PARAMS_PREFIX, "", step=True)
# ... and generate_param_only_checkpoint with pure_nnx.
NNX_PARAMS = TreeLayout("nnx", "", VALUE_SUFFIX, step=False)


@dataclasses.dataclass(frozen=True)
class CheckpointTree:
  """One checkpoint's tree: its parameters by model path, and what else it holds.

  `layout` is how this tree stores parameters; `nnx` whether it came from NNX; `train_state` whether
  it holds an optimizer state; `scan_layers` the layout of its decoder layers (None: no layers).
  `lora` lists the stored paths of LoRA adapter leaves; `skipped` every leaf that is not a parameter.
  """
  layout: TreeLayout
  nnx: bool
  train_state: bool
  scan_layers: bool | None
  params: dict[str, str]
  lora: tuple[str, ...] = ()
  skipped: tuple[str, ...] = ()

  @property
  def parameter_only_layout(self) -> TreeLayout:
    """The tree MaxText's generate_param_only_checkpoint writes for this checkpoint's kind."""
    return NNX_PARAMS if self.nnx else LINEN

  def stored(self, model_path: str) -> str | None:
    """Where the parameter at `model_path` is stored, or None when the tree does not have it."""
    return self.params.get(model_path)

  def adapters(self) -> "CheckpointTree":
    """This tree read as a LoRA adapter: its adapter leaves by their path under the layout's prefix
    (`decoder/layers/.../kernel_lora_a/value`, as a derived LoRA family names them)."""
    prefix = self.layout.prefix
    return dataclasses.replace(self, params={stored[len(prefix):]: stored for stored in self.lora
                                             if stored.startswith(prefix)}, lora=())

  def require_model(self, where: str) -> None:
    """Refuses, in one line, a tree that is not a MaxText model's parameters."""
    if self.lora:
      raise ConversionError(f"{where}: holds a LoRA adapter ({self.lora[0]}, {len(self.lora)} adapter arrays), "
                            "not a model; give the base model's checkpoint, or convert the adapter with the LoRA "
                            "options")
    if not self.params:
      raise ConversionError(f"{where}: no MaxText model parameters in the checkpoint tree (nothing under "
                            f"{', '.join(r + '/' for r in MODEL_ROOTS)}); is it a MaxText checkpoint?")


def detect(paths: Iterable[str], custom_metadata: dict[str, Any] | None = None) -> CheckpointTree:
  """The tree of a checkpoint from its leaves' paths (`_METADATA`) and its step's custom metadata."""
  leaves = sorted(paths)
  skipped = [p for p in leaves if p == STEP or p.split("/", 1)[0] in NOT_PARAMETERS]
  candidates = [p for p in leaves if p != STEP and p.split("/", 1)[0] not in NOT_PARAMETERS]
  prefix = next((c for c in (PARAMS_PREFIX, "params/") if candidates and all(p.startswith(c) for p in candidates)), "")
  inner = [p[len(prefix):] for p in candidates]
  suffix = VALUE_SUFFIX if inner and all(p.endswith(VALUE_SUFFIX) for p in inner) else ""
  model_paths = {p[:len(p) - len(suffix)]: prefix + p for p in inner}
  lora = tuple(stored for path, stored in model_paths.items() if any(_LORA.fullmatch(c) for c in path.split("/")))
  adapter = set(lora)
  params = {path: stored for path, stored in model_paths.items()
            if path.split("/", 1)[0] in MODEL_ROOTS and stored not in adapter}
  kept = set(params.values()) | adapter
  skipped += [stored for stored in model_paths.values() if stored not in kept]
  nnx = any(p.startswith("nnx_aux/") for p in leaves) or prefix != PARAMS_PREFIX or (suffix != "" and not lora)
  layout = TreeLayout("nnx" if nnx else "linen", prefix, suffix, step=STEP in leaves)
  # A parameter-only TrainState keeps an empty `opt_state` placeholder leaf; a training state has leaves under it.
  train_state = any(p.startswith("opt_state/") for p in leaves)
  return CheckpointTree(layout, nnx, train_state, _scan_layers(list(model_paths), custom_metadata), params, lora,
                        tuple(sorted(skipped)))


def _scan_layers(model_paths: list[str], custom_metadata: dict[str, Any] | None) -> bool | None:
  """custom_metadata.scan_layers when it says, else the decoder's containers: stacked or numbered."""
  if isinstance((custom_metadata or {}).get("scan_layers"), bool):
    return custom_metadata["scan_layers"]
  containers = {p.split("/")[1] for p in model_paths if p.startswith("decoder/") and p.count("/") >= 2}
  if any(_SCANNED.fullmatch(c) for c in containers):
    return True
  if any(_UNSCANNED.fullmatch(c) for c in containers):
    return False
  return None
