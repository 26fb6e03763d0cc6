"""Host-side mask encodings: the reference's uncompressed RLE and pycocotools' COCO RLE.

Counts run over the mask in column-major (Fortran) order and start with a run of zeros, as the
reference's ``mask_to_rle_pytorch``; :func:`coco_encode_rle` compresses them through
``pycocotools.mask.frPyObjects`` as the reference does, so strings are byte-identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """``(H, W)`` bool mask -> ``{"size": [H, W], "counts": [...]}`` (uncompressed RLE)."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [h * w]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> ``(H, W)`` bool mask."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO RLE with a JSON-ready ``str`` of counts."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` as ``str`` or ``bytes``) -> ``(H, W)`` bool mask."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode()
    return mask_utils.decode({"size": rle["size"], "counts": counts}).astype(bool)


def paste(mask: np.ndarray, crop_box: list[int] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` mask of the crop ``[x0, y0, x1, y1]`` -> ``(H, W)`` mask of the image, zero
    outside the crop (the reference's ``uncrop_masks``)."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, size[1], size[0]):
        return mask
    out = np.zeros(size, bool)
    out[y0:y1, x0:x1] = mask
    return out
