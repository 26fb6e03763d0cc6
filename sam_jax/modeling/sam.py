"""The whole model, plus the reference's pre- and post-processing (reference ``sam.py``).

Pre/post-processing are pure functions over arrays with static shapes: images arrive already
padded to ``img_size`` (with their valid size given), and resizing of masks is expressed as two
interpolation matrices so any output size runs as a matmul.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from sam_jax.config import SamConfig
from sam_jax.modeling.common import linear_resize_matrix
from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import PromptEncoder


class Sam(nnx.Module):
    """Segment Anything: image encoder, prompt encoder and mask decoder."""

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.image_encoder = ImageEncoderViT(config.image_encoder, rngs=rngs)
        self.prompt_encoder = PromptEncoder(config.prompt_encoder, rngs=rngs)
        self.mask_decoder = MaskDecoder(config.mask_decoder, rngs=rngs)


def preprocess(
    images: Float[Array, "B S S 3"] | Int[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    config: SamConfig,
) -> Float[Array, "B S S 3"]:
    """Normalise pixels, then zero the padding (reference: normalise, then pad bottom/right).

    ``images`` hold each resized image in their top-left ``input_sizes[b] = (h, w)`` corner.
    """
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(config.pixel_mean, jnp.float32)) / jnp.asarray(config.pixel_std, jnp.float32)
    s = x.shape[1]
    rows = jnp.arange(s)[None, :, None] < input_sizes[:, 0, None, None]
    cols = jnp.arange(s)[None, None, :] < input_sizes[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0)


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


def postprocess_masks(
    masks: Float[Array, "... m m"], rows: Float[Array, "H m"], cols: Float[Array, "W m"]
) -> Float[Array, "... H W"]:
    """Resize low-res mask logits to the original image with matrices from
    :func:`postprocess_matrices` (composing the reference's two bilinear resizes and the crop)."""
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("...ij,wj->...iw", masks, cols, precision=hp)
    return jnp.einsum("hi,...iw->...hw", rows, x, precision=hp)


def band(matrix: np.ndarray, rows: int, width: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(n, m)`` interpolation matrix -> ``(rows,)`` start indices and ``(rows, width)`` weights.

    The reference's resize chain (bilinear up to the model size, crop, bilinear to the output size)
    composes into a matrix with at most three consecutive non-zeros per row, so a 3-tap gather
    replaces an ``m``-long dot product (``m / 3`` times fewer flops). Rows past ``n`` are padding.
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


def banded_resize(
    x: Float[Array, "m m"],
    row_start: Int[Array, " H"],
    row_weights: Float[Array, "H K"],
    col_start: Int[Array, " W"],
    col_weights: Float[Array, "W K"],
) -> Float[Array, "H W"]:
    """:func:`postprocess_masks` for one mask with :func:`band`-ed matrices: two ``K``-tap
    gathers (columns first) instead of two ``m``-long dot products; the same sums without the
    zero terms."""

    def rows(x: jax.Array, start: jax.Array, weights: jax.Array) -> jax.Array:
        out = x[start] * weights[:, :1]
        for k in range(1, weights.shape[1]):
            out = out + x[start + k] * weights[:, k : k + 1]
        return out

    x = rows(x.T, col_start, col_weights).T
    return rows(x, row_start, row_weights)
