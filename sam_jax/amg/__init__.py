"""Automatic mask generation: the generators, their jittable ops and host-side encodings.

``SamAutomaticMaskGenerator`` (SAM 1) and ``SAM2AutomaticMaskGenerator`` (SAM 2) are imported on
first use, so ``sam_jax.amg.cli`` loads without JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["SAM2AutomaticMaskGenerator", "SamAutomaticMaskGenerator"]
_MODULES = {
    "SamAutomaticMaskGenerator": "sam_jax.amg.generator",
    "SAM2AutomaticMaskGenerator": "sam_jax.amg.sam2_generator",
}

if TYPE_CHECKING:
    from sam_jax.amg.generator import SamAutomaticMaskGenerator
    from sam_jax.amg.sam2_generator import SAM2AutomaticMaskGenerator


# Family tag (``config.family``) -> the family's generator.
GENERATORS = {"sam": "SamAutomaticMaskGenerator", "sam2": "SAM2AutomaticMaskGenerator"}


def mask_generator(model: Any, **kwargs: Any) -> Any:
    """The automatic mask generator of ``model``'s family, built on ``model`` with ``kwargs`` (the
    reference's arguments; each family keeps its reference's defaults)."""
    tag = getattr(getattr(model, "config", None), "family", None)
    if tag not in GENERATORS:
        raise TypeError(f"expected a sam_jax model (families {sorted(GENERATORS)}), got {type(model).__name__}")
    return __getattr__(GENERATORS[tag])(model, **kwargs)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'sam_jax.amg' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
