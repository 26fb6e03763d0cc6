"""Prompted segmentation of one image file to files: mask PNGs, scores and an overlay.

The library behind ``sam-jax segment`` and ``examples/segment_image.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from sam_jax.modeling.sam import Sam
from sam_jax.predictor import SamPredictor
from sam_jax.visualize import overlay


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grayscale and RGBA are converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a PNG atomically (a partial file never appears under the final name)."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


def segment_to_files(
    model: Sam,
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

    Returns the summary written to ``scores.json``.
    """
    image = read_image(image_path)
    boxes = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    if boxes is not None and len(boxes) > 1 and points is not None:
        raise ValueError("points can be combined with one box only; give one --box, or no --point")
    if points is None and boxes is None:
        raise ValueError("give at least one point or box")
    predictor = SamPredictor(model)
    predictor.set_image(image)
    if boxes is not None and len(boxes) > 1:
        masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=multimask_output)
    else:
        m, s, _ = predictor.predict(points, labels, None if boxes is None else boxes[0], None, multimask_output)
        masks, scores = m[None], s[None]
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
    tmp = out / "scores.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "scores.json")
    return summary
