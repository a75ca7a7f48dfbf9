"""Model families, keyed by the HF architecture name in config.json."""
from models.llama import LLAMA31
from models.qwen import QWEN3, QWEN25
from models.spec import Family, Param

FAMILIES: tuple[Family, ...] = (LLAMA31, QWEN25, QWEN3)
BY_ARCHITECTURE: dict[str, Family] = {arch: f for f in FAMILIES for arch in f.architectures}
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

__all__ = ["FAMILIES", "BY_ARCHITECTURE", "BY_NAME", "Family", "Param"]
