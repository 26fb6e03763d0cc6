"""Image input checks and conversions, shared by the predictor, the mask generator and the CLI."""

from __future__ import annotations

import numpy as np


def as_rgb_uint8(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Return ``image`` as an ``(H, W, 3)`` uint8 RGB array.

    Accepted: ``(H, W, 3)`` uint8 in ``image_format`` "RGB" or "BGR" (the reference's input);
    grayscale ``(H, W)`` or ``(H, W, 1)`` uint8, replicated to three channels; ``(H, W, 4)``
    uint8 RGBA/BGRA, whose alpha is dropped (not composited). Float or other integer images are
    refused: their value range is ambiguous, convert them to uint8 first.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"image must be uint8 (H, W, 3), got dtype {image.dtype}; convert floats in [0, 1] "
            "with (image * 255).round().astype(np.uint8)"
        )
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image must be (H, W, 3) RGB, (H, W) / (H, W, 1) gray or (H, W, 4) RGBA, got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image_format == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)
