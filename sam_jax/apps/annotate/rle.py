"""COCO run-length encoding (``{"size": [H, W], "counts": "<compressed string>"}``, column-major runs).

Masks are encoded with ``pycocotools.mask.encode``. RLEs that come from a browser are parsed and
checked here first (every run non-negative, runs summing to ``H * W``): pycocotools' decoder does no
bounds checking, so it must never see an unchecked string.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

MAX_COUNTS_CHARS = 4_000_000


def encode(mask: np.ndarray) -> dict[str, Any]:
    """``(H, W)`` bool mask -> COCO RLE with ``counts`` as a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def counts_from_string(s: str) -> list[int]:
    """Parse a compressed COCO counts string (the inverse of pycocotools' ``rleToString``).

    Raises ValueError on characters outside the alphabet or a truncated last run.
    """
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("RLE counts string is truncated")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has an invalid character {s[p]!r}")
            if k > 12:  # more than 60 bits: no mask is that large
                raise ValueError("RLE counts string holds a run that is too long")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def check(rle: object, size: tuple[int, int], what: str = "segmentation") -> dict[str, Any]:
    """``rle`` as a clean ``{"size", "counts"}`` dict if it is a valid RLE of an ``(H, W)`` = ``size``
    mask, else ValueError naming ``what``."""
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise ValueError(f"{what} must be a COCO RLE object {{'size': [H, W], 'counts': '...'}}")
    if rle["size"] != list(size):
        raise ValueError(f"{what}: size {rle['size']!r} does not match the image size {list(size)}")
    counts = rle["counts"]
    if not isinstance(counts, str) or len(counts) > MAX_COUNTS_CHARS:
        raise ValueError(f"{what}: counts must be a compressed RLE string of at most {MAX_COUNTS_CHARS} characters")
    try:
        runs = counts_from_string(counts)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if any(r < 0 for r in runs) or sum(runs) != size[0] * size[1]:
        raise ValueError(f"{what}: RLE runs must be non-negative and cover the {size[0]}x{size[1]} image exactly")
    return {"size": list(size), "counts": counts}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """A checked RLE (see :func:`check`) -> ``(H, W)`` bool mask."""
    h, w = rle["size"]
    runs = np.asarray(counts_from_string(rle["counts"]), np.int64)
    values = np.arange(len(runs)) % 2 == 1  # runs alternate 0s and 1s, starting with 0s
    return np.repeat(values, runs).reshape(w, h).T  # column-major runs


def area_and_bbox(rle: dict[str, Any]) -> tuple[int, list[float]]:
    """Pixel count and XYWH box of a checked RLE (``[0, 0, 0, 0]`` for an empty mask)."""
    coco = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return int(mask_utils.area(coco)), [float(v) for v in mask_utils.toBbox(coco)]
