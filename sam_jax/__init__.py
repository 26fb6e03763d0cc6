"""sam_jax: Segment Anything in JAX/Flax NNX.

The public names below are imported on first use (PEP 562), so ``import sam_jax`` and the
command line's ``--help`` do not pay for importing JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SAM2AutomaticMaskGenerator": "sam_jax.amg.sam2_generator",
    "SAM2ImagePredictor": "sam_jax.predictors.sam2",
    "SAM2VideoPredictor": "sam_jax.predictors.sam2_video",
    "Sam": "sam_jax.models.sam.model",
    "Sam2": "sam_jax.models.sam2.model",
    "SamAutomaticMaskGenerator": "sam_jax.amg.generator",
    "SamConfig": "sam_jax.models.sam.config",
    "SamPredictor": "sam_jax.predictors.sam",
    "build_sam": "sam_jax.build",
    "get_config": "sam_jax.models.registry",
    "load_sam": "sam_jax.build",
    "sam_model_registry": "sam_jax.build",
    "save_sam": "sam_jax.build",
}
__all__ = [
    "SAM2AutomaticMaskGenerator",
    "SAM2ImagePredictor",
    "SAM2VideoPredictor",
    "Sam",
    "Sam2",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "get_config",
    "load_sam",
    "sam_model_registry",
    "save_sam",
]

if TYPE_CHECKING:
    from sam_jax.amg.generator import SamAutomaticMaskGenerator
    from sam_jax.amg.sam2_generator import SAM2AutomaticMaskGenerator
    from sam_jax.build import build_sam, load_sam, sam_model_registry, save_sam
    from sam_jax.models.registry import get_config
    from sam_jax.models.sam.config import SamConfig
    from sam_jax.models.sam.model import Sam
    from sam_jax.models.sam2.model import Sam2
    from sam_jax.predictors.sam import SamPredictor
    from sam_jax.predictors.sam2 import SAM2ImagePredictor
    from sam_jax.predictors.sam2_video import SAM2VideoPredictor


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
