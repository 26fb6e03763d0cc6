"""Mask logits from the decoder's low resolution to an image or crop (the reference's
``postprocess_masks``: bilinear up to the model size, crop to the resized input, bilinear to the
original size), in one place for the predictors and the mask generator. The two resizes and the
crop compose into one matrix per axis with at most three non-zeros per row, applied as a 3-tap
gather (:class:`Resize`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from sam_jax.core.transforms import preprocess_shape
from sam_jax.models.layers import linear_resize_matrix


@functools.lru_cache(maxsize=64)
def postprocess_matrices(
    low_res: int, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices ``(H, low_res)``, ``(W, low_res)`` for the reference's
    upsample-to-``img_size``, crop-to-``input_size``, resize-to-``original_size`` chain."""
    up = linear_resize_matrix(low_res, img_size)
    mats = []
    for axis in range(2):
        crop = up[: input_size[axis]]
        mats.append((linear_resize_matrix(input_size[axis], original_size[axis]) @ crop).astype(np.float32))
    return mats[0], mats[1]


def band(matrix: np.ndarray, rows: int, width: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(n, m)`` interpolation matrix -> ``(rows,)`` start indices and ``(rows, width)`` weights.

    The reference's resize chain composes into a matrix with at most three consecutive non-zeros
    per row, so a 3-tap gather replaces an ``m``-long dot product (``m / 3`` times fewer flops).
    Rows past ``n`` are padding (zero weights).
    """
    n, m = matrix.shape
    if rows < n or width > m:
        raise ValueError(f"band of a {matrix.shape} matrix needs rows >= {n} and width <= {m}, got {rows}, {width}")
    nonzero = matrix != 0
    first = np.where(nonzero.any(1), nonzero.argmax(1), 0)
    start = np.minimum(first, m - width).astype(np.int32)
    cols = start[:, None] + np.arange(width)[None]
    if not np.array_equal(np.take_along_axis(nonzero, cols, axis=1).sum(1), nonzero.sum(1)):
        raise ValueError(f"interpolation matrix has rows wider than {width} taps")
    weights = np.take_along_axis(matrix, cols, axis=1)
    pad = rows - n
    return np.pad(start, (0, pad)), np.pad(weights.astype(np.float32), ((0, pad), (0, 0)))


class Resize(NamedTuple):
    """Banded bilinear resize from ``m x m`` low-res logits to an ``Hb x Wb`` canvas (a pytree).

    Output row ``i`` reads low-res rows ``row_start[i] .. row_start[i] + K - 1`` with
    ``row_weights[i]``; columns likewise. Only the top-left ``size = (h, w)`` of the canvas is the
    image (or crop); a larger canvas (shared by several sizes, so they share compiled programs)
    has zero weights outside it, masked by :func:`inside`.
    """

    row_start: Int[Array, " Hb"]
    row_weights: Float[Array, "Hb K"]
    col_start: Int[Array, " Wb"]
    col_weights: Float[Array, "Wb K"]
    size: Int[Array, " 2"]

    @classmethod
    def make(
        cls, low_res: int, img_size: int, original_size: tuple[int, int], canvas: tuple[int, int] | None = None
    ) -> Resize:
        """The reference's mask resize for an image of ``original_size`` (H, W), which the model
        saw resized to its long side ``img_size``; on a ``canvas`` (default: the image size)."""
        h, w = original_size
        hb, wb = original_size if canvas is None else canvas
        rows, cols = postprocess_matrices(low_res, img_size, preprocess_shape(h, w, img_size), (h, w))
        return cls(*band(rows, hb), *band(cols, wb), np.array([h, w], np.int32))

    @classmethod
    def direct(cls, low_res: int, original_size: tuple[int, int], canvas: tuple[int, int] | None = None) -> Resize:
        """One bilinear resize from ``low_res`` straight to ``original_size`` (H, W), on a ``canvas``
        (default: the image size): SAM 2's ``postprocess_masks`` (``F.interpolate(masks, orig_hw,
        mode="bilinear", align_corners=False)``, no antialias), since SAM 2 squashes the whole image
        to the model's square input instead of padding it."""
        h, w = original_size
        hb, wb = original_size if canvas is None else canvas
        rows = linear_resize_matrix(low_res, h).astype(np.float32)
        cols = linear_resize_matrix(low_res, w).astype(np.float32)
        return cls(*band(rows, hb), *band(cols, wb), np.array([h, w], np.int32))


def resize(low_res: Float[Array, "m m"], r: Resize) -> Float[Array, "Hb Wb"]:
    """One mask's logits resized onto ``r``'s canvas: two 3-tap gathers (columns first), the
    dense matrices' sums without their zero terms.

    Deliberately per mask with row gathers only: batched gathers get transposed layouts on
    XLA:CPU that make the reductions that follow (AMG's statistics) several times slower.
    """

    def rows(x: ArrayLike, start: ArrayLike, weights: ArrayLike) -> jax.Array:
        out = x[start] * weights[:, :1]
        for k in range(1, weights.shape[1]):
            out = out + x[start + k] * weights[:, k : k + 1]
        return out

    x = rows(low_res.T, r.col_start, r.col_weights).T
    return rows(x, r.row_start, r.row_weights)


def inside(r: Resize) -> Bool[Array, "Hb Wb"]:
    """Pixels of ``r``'s canvas that belong to the image (or crop)."""
    rows = jax.numpy.arange(r.row_start.shape[0]) < r.size[0]
    cols = jax.numpy.arange(r.col_start.shape[0]) < r.size[1]
    return rows[:, None] & cols[None, :]
