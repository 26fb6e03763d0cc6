"""Automatic mask generation: the generator, its jittable ops and host-side encodings."""

from sam_jax.amg.generator import SamAutomaticMaskGenerator

__all__ = ["SamAutomaticMaskGenerator"]
