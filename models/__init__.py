"""Model families, keyed by the HF architecture name in config.json.

Every module in this package that defines a module-level `Family` registers it: adding a family
is adding a file.
"""
import importlib
import pkgutil

from models.spec import Family, Param, Stack

FAMILIES: tuple[Family, ...] = tuple(
    value
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    for value in vars(importlib.import_module(f"{__name__}.{info.name}")).values()
    if isinstance(value, Family))
BY_ARCHITECTURE: dict[str, Family] = {arch: f for f in FAMILIES for arch in f.architectures}
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

if len(BY_NAME) != len(FAMILIES) or len(BY_ARCHITECTURE) != sum(len(f.architectures) for f in FAMILIES):
  raise ImportError("two model families share a name or an architecture")

# Each family's LoRA adapters (models/lora.py), derived from its parameters: "<family>+lora".
from models.lora import lora_family  # pylint: disable=wrong-import-position
BY_NAME.update({derived.name: derived for derived in map(lora_family, FAMILIES) if derived is not None})

__all__ = ["FAMILIES", "BY_ARCHITECTURE", "BY_NAME", "Family", "Param", "Stack"]
