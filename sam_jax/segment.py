"""Prompted segmentation of one image file to files: mask PNGs, scores and an overlay.

The library behind ``sam-jax segment`` and ``examples/segment_image.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flax import nnx

from sam_jax.io import read_image, write_json, write_png
from sam_jax.predictors import image_predictor
from sam_jax.visualize import overlay


def check_prompts_inside(
    size: tuple[int, int], points: np.ndarray | None = None, boxes: np.ndarray | None = None
) -> None:
    """Raise ``ValueError`` for a point outside an image of ``size`` ``(H, W)`` (x in ``[0, W]``,
    y in ``[0, H]``) or a box with no part inside it: the model would silently clamp or ignore such
    a prompt (a typo, or coordinates of another image size), so the mistake is named instead."""
    h, w = size
    for x, y in np.asarray(points if points is not None else np.zeros((0, 2)), np.float64).reshape(-1, 2):
        if not (0 <= x <= w and 0 <= y <= h):
            raise ValueError(f"point {x:g},{y:g} is outside the image, which is {w} x {h} pixels (W x H)")
    for x1, y1, x2, y2 in np.asarray(boxes if boxes is not None else np.zeros((0, 4)), np.float64).reshape(-1, 4):
        if x2 < 0 or y2 < 0 or x1 > w or y1 > h:
            raise ValueError(
                f"box {x1:g},{y1:g},{x2:g},{y2:g} lies entirely outside the image, which is {w} x {h} pixels (W x H)"
            )


def segment_to_files(
    model: nnx.Module,
    image_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    multimask_output: bool = True,
) -> dict:
    """Segment ``image_path`` and write ``mask_<i>[_<j>].png``, ``scores.json`` and ``overlay.png``.

    Args:
      points: ``(N, 2)`` xy pixels; labels ``(N,)`` (1 foreground, 0 background).
      boxes: ``(B, 4)`` xyxy. With one box (or none), points and box form one prompt; with several
        boxes each box is its own prompt (points are then refused as ambiguous).

    Raises ``ValueError`` for an unreadable image, a point outside it or a box wholly outside it.

    Returns the summary written to ``scores.json``.
    """
    image = read_image(image_path)
    boxes = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    if boxes is not None and len(boxes) > 1 and points is not None:
        raise ValueError("points can be combined with one box only; give one --box, or no --point")
    if points is None and boxes is None:
        raise ValueError("give at least one point or box")
    check_prompts_inside(image.shape[:2], points, boxes)
    predictor = image_predictor(model)  # SamPredictor or SAM2ImagePredictor, by the model's family
    predictor.set_image(image)
    if boxes is not None and len(boxes) > 1:
        if model.config.family == "sam":
            masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=multimask_output)
        else:  # SAM 2 takes a (B, 4) box batch in predict
            masks, scores, _ = predictor.predict(box=boxes, multimask_output=multimask_output)
    else:
        m, s, _ = predictor.predict(points, labels, None if boxes is None else boxes[0], None, multimask_output)
        masks, scores = m[None], s[None]
    masks = np.asarray(masks).astype(bool)  # SAM 2's predictor returns float 0/1 masks, as its reference
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(masks.shape[0]):
        for j in range(masks.shape[1]):
            name = f"mask_{i}_{j}.png" if masks.shape[0] > 1 else f"mask_{j}.png"
            write_png(out / name, masks[i, j].astype(np.uint8) * 255)
            files.append({"file": name, "prompt": i, "mask": j, "score": float(scores[i, j])})
    best = masks[np.arange(len(masks)), scores.argmax(axis=1)]
    write_png(out / "overlay.png", overlay(image, best, points=points, labels=labels, boxes=boxes))
    summary = {
        "image": str(image_path),
        "image_size": list(image.shape[:2]),
        "model": model.config.name,
        "masks": files,
        "overlay": "overlay.png",
    }
    write_json(out / "scores.json", summary)
    return summary
