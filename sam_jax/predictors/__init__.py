"""Stateful predictors (the reference's APIs) as thin wrappers over :mod:`sam_jax.core`."""

from __future__ import annotations

import importlib
from typing import Any

# Family tag (``config.family``) -> the family's image predictor, imported on first use.
IMAGE_PREDICTORS = {
    "sam": "sam_jax.predictors.sam:SamPredictor",
    "sam2": "sam_jax.predictors.sam2:SAM2ImagePredictor",
}


def image_predictor(model: Any, **kwargs: Any) -> Any:
    """The image predictor of ``model``'s family (``SamPredictor`` for SAM 1, ``SAM2ImagePredictor``
    for SAM 2), built on ``model`` with ``kwargs``."""
    tag = getattr(getattr(model, "config", None), "family", None)
    if tag not in IMAGE_PREDICTORS:
        raise TypeError(f"expected a sam_jax model (families {sorted(IMAGE_PREDICTORS)}), got {type(model).__name__}")
    module, name = IMAGE_PREDICTORS[tag].split(":")
    return getattr(importlib.import_module(module), name)(model, **kwargs)
