"""Shared pieces of the ``sam-jax annotate`` tests: the demo model, image folders, mask maths."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

SHAPES = Path(__file__).parents[1] / "examples" / "images" / "shapes.png"


@functools.cache
def demo_model() -> Any:
    """The bundled demo model, loaded once per test process."""
    from sam_jax import load_sam
    from sam_jax.assets import demo_checkpoint_dir

    return load_sam(demo_checkpoint_dir())


def make_images(root: Path, names: tuple[str, ...] = ("shapes.png",)) -> Path:
    """``root`` holding a copy of examples/images/shapes.png under each of ``names``."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHAPES, root / name)
    return root


def decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE with a str ``counts`` -> ``(H, W)`` bool."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def reference_mask(image_path: Path, prompts: dict[str, Any]) -> np.ndarray:
    """The mask ``sam_jax.SamPredictor`` gives for saved ``prompts`` (points/point_labels/box in image
    pixels, ``mask_index``, ``multimask``) on the demo model."""
    from sam_jax import SamPredictor
    from sam_jax.io import read_image

    predictor = SamPredictor(demo_model())
    predictor.set_image(read_image(image_path))
    points = np.array(prompts["points"], np.float32).reshape(-1, 2)
    labels = np.array(prompts["point_labels"], np.int32)
    box = None if prompts["box"] is None else np.array(prompts["box"], np.float32)
    masks, scores, _ = predictor.predict(
        points if len(points) else None, labels if len(points) else None, box, None, prompts["multimask"]
    )
    k = prompts["mask_index"] if prompts["mask_index"] is not None else int(np.argmax(scores))
    return masks[k]
