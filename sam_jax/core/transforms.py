"""Host-side geometry of the reference's ``ResizeLongestSide``: image resize with Pillow and the
matching coordinate maps. NumPy in, NumPy out."""

from __future__ import annotations

import numpy as np
from PIL import Image


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``long_side`` (reference rounding ``int(x + 0.5)``)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` uint8 with Pillow's bilinear filter, as
    ``ResizeLongestSide.apply_image`` (torchvision's resize on a PIL image) does."""
    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``(..., 2)`` xy points in the original image -> the resized (model-input) frame."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords.astype(np.float32)


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``(..., 4)`` xyxy boxes in the original image -> the resized (model-input) frame."""
    boxes = np.asarray(boxes)
    return apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, long_side).reshape(boxes.shape)
