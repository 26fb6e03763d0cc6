"""Files and arrays in and out, one place for every entry point: the image reader (one EXIF policy),
input checks and conversions, and atomic writers.

EXIF policy: :func:`read_image` (and :func:`read_mask`) apply the file's EXIF orientation, so a
photo is segmented upright, as viewers show it and as the reference's ``scripts/amg.py`` (OpenCV's
``imread``) reads it; masks, boxes and points are in that upright frame. A truncated or corrupt
file is refused with ``ValueError`` (Pillow does not load truncated images), never read as a
partly grey image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps


def _open_upright(path: str | os.PathLike, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB, upright (see the EXIF policy above); grayscale,
    palette and RGBA files are converted (alpha dropped). Raises ``ValueError`` for unreadable files."""
    return _open_upright(path, "RGB")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask or label image as ``(H, W)`` (its values as stored: the first channel of a colour
    one, the indices of a palette one), upright."""
    try:
        with Image.open(path) as im:
            array = np.asarray(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read mask {path}: {e}") from e
    return array if array.ndim == 2 else array[..., 0]


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, fsync and ``os.replace``: a partial
    file never appears under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (``(H, W)`` or ``(H, W, 3)`` uint8) as a PNG, atomically."""
    import io as _bytes_io

    buffer = _bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


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
