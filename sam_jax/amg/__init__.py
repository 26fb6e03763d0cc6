"""Automatic mask generation: the generator, its jittable ops and host-side encodings.

``SamAutomaticMaskGenerator`` is imported on first use, so ``sam_jax.amg.cli`` loads without JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SamAutomaticMaskGenerator"]

if TYPE_CHECKING:
    from sam_jax.amg.generator import SamAutomaticMaskGenerator


def __getattr__(name: str) -> Any:
    if name != "SamAutomaticMaskGenerator":
        raise AttributeError(f"module 'sam_jax.amg' has no attribute {name!r}")
    from sam_jax.amg.generator import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator
