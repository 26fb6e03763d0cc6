"""Names shared by the writer (:mod:`sam_jax.export.writer`) and the loader
(:mod:`sam_jax.export.runtime`): files of an export directory and the manifest's format. Plain
Python, no JAX."""

from __future__ import annotations

FORMAT = "sam_jax.export"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# Every weight leaf in program order (``p00000``, ``p00001``, ...), plus the decoder's positional
# encoding of the embedding grid under ``image_pe``.
PARAMS = "params.npz"
IMAGE_PE = "image_pe"
# Encoder programs: one for CPUs (images one at a time with the blocked CPU policy, as the
# predictors run on a CPU), one for accelerators (the whole batch, whole ops).
ENCODER_CPU = "encoder_cpu"
ENCODER_ACCEL = "encoder_accel"
# The mask postprocessing (low-res logits to the original image size), for every platform.
POSTPROCESS = "postprocess"


def artifact_file(name: str) -> str:
    """File of a serialized ``jax.export.Exported``."""
    return f"{name}.jax_exported"


def param_key(i: int) -> str:
    """Key of weight leaf ``i`` in :data:`PARAMS`."""
    return f"p{i:05d}"


# The decoder's prompt inputs (:class:`sam_jax.core.prompts.Prompts`' fields, in order); a program
# takes the box and mask fields only if its kind has them.
PROMPT_FIELDS = ("point_coords", "point_labels", "point_valid", "boxes", "box_valid", "mask_input", "mask_valid")
