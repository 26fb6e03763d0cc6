"""The reference's mask postprocessing inside an exported program, for an image size that is a
symbolic dimension: the same banded :class:`~sam_jax.core.resize.Resize` that
:meth:`Resize.make <sam_jax.core.resize.Resize.make>` / :meth:`Resize.direct
<sam_jax.core.resize.Resize.direct>` build on the host, built on the device from ``(H, W)``.

The host builds it in float64 from float32 taps (PyTorch's, :func:`~sam_jax.models.layers.linear_resize_matrix`)
and rounds the composed weights to float32 once; this does the same steps in the same precisions
(float64 for the composition: the program is exported under :func:`jax.enable_x64`; its
inputs and outputs are int32 / float32), so the weights, and hence the
upscaled logits, are the jitted path's bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from sam_jax.core.resize import Resize
from sam_jax.models.layers import linear_resize_matrix

# Taps per output row of the composed resize (see :func:`sam_jax.core.resize.band`).
TAPS = 3


def _torch_taps(in_size: Int[Array, ""], out_size: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`~sam_jax.models.layers.linear_resize_matrix`'s taps for a traced ``in_size`` and a
    (possibly symbolic) ``out_size``: ``i0, i1`` int32 and ``w0, w1`` float32 ``(out_size,)``,
    the same float32 operations in the same order."""
    f = jnp.float32
    # XLA turns a division by a constant (``out_size`` once the shape is known) into a product
    # with its reciprocal; in float64 and rounded once to float32 it is the host's quotient.
    scale = (in_size.astype(jnp.float64) / jnp.asarray(out_size).astype(jnp.float64)).astype(f)
    # The ``maximum`` (a no-op) keeps the product rounded before the subtraction: XLA:CPU would
    # otherwise fuse the two into one FMA, unlike NumPy (and ATen).
    src = jnp.maximum(jnp.maximum(scale * (jnp.arange(out_size, dtype=f) + f(0.5)), f(0.0)) - f(0.5), f(0.0))
    i0 = jnp.minimum(src.astype(jnp.int32), in_size - 1)
    i1 = jnp.minimum(i0 + 1, in_size - 1)
    w1 = jnp.clip(src - i0.astype(f), f(0.0), f(1.0))
    return i0, i1, f(1.0) - w1, w1


def _band(in_size: Int[Array, ""], out_size: int, first: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Rows of ``linear_resize_matrix(in_size, out_size) @ first[:in_size]`` (composed in float64,
    ``first`` an ``(n, m)`` float64 constant) as :func:`~sam_jax.core.resize.band` stores them:
    ``(out_size,)`` start columns and ``(out_size, TAPS)`` float32 weights."""
    i0, i1, w0, w1 = _torch_taps(in_size, out_size)
    first64 = jnp.asarray(first, jnp.float64)
    # Each product of float32 weights is exact in float64; the sum is rounded once, as the host's
    # matrix product of the same two non-zero terms.
    rows = w0.astype(jnp.float64)[:, None] * first64[i0] + w1.astype(jnp.float64)[:, None] * first64[i1]
    nonzero = rows != 0
    start = jnp.where(nonzero.any(1), jnp.argmax(nonzero, axis=1), 0)
    start = jnp.minimum(start, first.shape[1] - TAPS).astype(jnp.int32)
    cols = start[:, None] + jnp.arange(TAPS, dtype=jnp.int32)[None]
    return start, jnp.take_along_axis(rows, cols, axis=1).astype(jnp.float32)


def resize_for_size(low_res: int, img_size: int | None, height: int, width: int) -> Resize:
    """The mask resize for an original image of ``(height, width)`` (symbolic dimensions allowed):
    :meth:`Resize.make` (SAM 1: up to ``img_size``, crop to the resized input, down to the image)
    when ``img_size`` is given, else :meth:`Resize.direct` (SAM 2: straight to the image)."""
    if img_size is None:
        first = np.eye(low_res)
        in_h = in_w = jnp.int32(low_res)
    else:
        first = linear_resize_matrix(low_res, img_size)
        in_h, in_w = input_size(height, width, img_size)
    rows = _band(in_h, height, first)
    cols = _band(in_w, width, first)
    size = jnp.stack([jnp.asarray(height), jnp.asarray(width)]).astype(jnp.int32)
    return Resize(*rows, *cols, size)


def input_size(height: int, width: int, long_side: int) -> tuple[Int[Array, ""], Int[Array, ""]]:
    """:func:`~sam_jax.core.transforms.preprocess_shape` on the device: the size after resizing the
    longest side to ``long_side``, with the host's float64 steps (``int(x * scale + 0.5)``)."""
    h = jnp.asarray(height).astype(jnp.float64)
    w = jnp.asarray(width).astype(jnp.float64)
    scale = jnp.float64(long_side) * 1.0 / jnp.maximum(h, w)
    # ``maximum`` (a no-op) keeps XLA from fusing the product and the sum into one FMA.
    return (jnp.maximum(h * scale, 0.0) + 0.5).astype(jnp.int32), (jnp.maximum(w * scale, 0.0) + 0.5).astype(jnp.int32)
