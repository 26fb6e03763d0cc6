"""Drawing masks, points and boxes over an image (Pillow), for overlays written by the CLI and
examples."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` uint8 distinct-ish colours, deterministic."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, (n, 3), dtype=np.uint8)


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    alpha: float = 0.5,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``(N, H, W)`` boolean masks in colour over an ``(H, W, 3)`` uint8 image.

    Later masks are drawn over earlier ones. Points (``(P, 2)`` xy, green for label 1, red
    otherwise) and ``(B, 4)`` xyxy boxes are drawn on top. Returns a new ``(H, W, 3)`` uint8 array.
    """
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (N, {image.shape[0]}, {image.shape[1]}), got {masks.shape}")
    out = image.astype(np.float32)
    for mask, colour in zip(masks.astype(bool), palette(len(masks)), strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    canvas = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    r = max(3, round(max(image.shape[:2]) / 150))
    for box in [] if boxes is None else np.asarray(boxes).reshape(-1, 4):
        draw.rectangle([float(v) for v in box], outline=(0, 160, 255), width=max(2, r // 2))
    if points is not None:
        labels = np.ones(len(points), int) if labels is None else labels
        for (x, y), lab in zip(np.asarray(points).reshape(-1, 2), labels, strict=True):
            fill = (0, 220, 0) if lab == 1 else (230, 0, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return np.asarray(canvas)
