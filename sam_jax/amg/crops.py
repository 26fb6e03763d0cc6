"""Crop boxes and point grids, exactly as the reference's ``utils/amg.py`` lays them out (host side,
NumPy in and out)."""

from __future__ import annotations

import itertools
import math

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n_per_side**2, 2)`` xy points evenly spaced in ``[0, 1]^2``, x fastest."""
    if n_per_side < 1:  # 1 / (2 * 0) would fail with a bare ZeroDivisionError
        raise ValueError(f"points per side must be >= 1, got {n_per_side}")
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer ``0..n_layers``; layer ``i`` has ``int(n_per_side / scale**i)`` points a side.

    Raises ``ValueError`` when a layer would get no points (too few points for the layers and
    downscale factor), naming the three settings."""
    sides = [int(n_per_side / (scale_per_layer**i)) for i in range(n_layers + 1)]
    if min(sides) < 1:
        raise ValueError(
            f"points_per_side {n_per_side} leaves no points on crop layer {sides.index(min(sides))} with "
            f"crop_n_layers {n_layers} and crop_n_points_downscale_factor {scale_per_layer}: it must be >= "
            f"{scale_per_layer**n_layers}"
        )
    return [build_point_grid(side) for side in sides]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes ``[x0, y0, x1, y1]`` and their layer indices: the whole image, then ``(2**i)**2``
    overlapping crops for layer ``i = 1..n_layers``. ``im_size`` is ``(H, W)``."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops)

    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_len(im_w, n_per_side, overlap)
        crop_h = crop_len(im_h, n_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        for x0, y0 in itertools.product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers
