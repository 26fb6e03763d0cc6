"""Small-region removal on the host with OpenCV's connected components, as the reference's
``remove_small_regions`` (8-connectivity, holes first then islands)."""

from __future__ import annotations

import numpy as np


def remove_small_regions(mask: np.ndarray, area_thresh: float | int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``
    pixels in an ``(H, W)`` bool mask. Returns the mask and whether it changed.

    When every island is small, the largest is kept.
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, -1]  # row 0 is the background label
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    fill = np.concatenate([[0], small])
    if not holes:
        fill = np.setdiff1d(np.arange(n_labels), fill)
        if fill.size == 0:
            fill = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, fill), True


def clean_mask(mask: np.ndarray, area_thresh: float | int) -> tuple[np.ndarray, bool]:
    """Holes, then islands, as the reference's ``postprocess_small_regions``; returns the mask and
    whether either step changed it."""
    mask, holes_changed = remove_small_regions(mask, area_thresh, "holes")
    mask, islands_changed = remove_small_regions(mask, area_thresh, "islands")
    return mask, holes_changed or islands_changed
