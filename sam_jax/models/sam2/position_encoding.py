"""Sine position encoding of SAM 2's FPN levels (reference ``sam2/modeling/position_encoding.py``,
``PositionEmbeddingSine``): the DETR encoding of each cell's (y, x), normalised to ``(0, scale]``.

It has no parameters and depends only on the grid size, so it is computed once in NumPy, in
float32 with the reference's order of operations (its values then match to the last bits of the
sines), and enters traced code as a constant.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


@functools.lru_cache(maxsize=32)
def sine_position_encoding(
    h: int,
    w: int,
    num_pos_feats: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float | None = None,
) -> np.ndarray:
    """``(h, w, num_pos_feats)`` float32: ``[pos_y, pos_x]``, each half interleaving sin and cos.

    ``PositionEmbeddingSine._pe``: positions ``1..h`` (and ``1..w``), divided by ``last + 1e-6``
    and multiplied by ``scale`` (default ``2*pi``) when ``normalize``; frequencies
    ``temperature ** (2 * (i // 2) / (num_pos_feats / 2))``.
    """
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    if scale is not None and not normalize:
        raise ValueError("normalize must be True if scale is given")
    scale = 2 * math.pi if scale is None else scale
    half = num_pos_feats // 2
    f32 = np.float32
    y = np.arange(1, h + 1, dtype=f32)
    x = np.arange(1, w + 1, dtype=f32)
    if normalize:
        y = y / (y[-1:] + f32(1e-6)) * f32(scale)
        x = x / (x[-1:] + f32(1e-6)) * f32(scale)
    i = np.arange(half, dtype=f32)
    dim_t = np.power(f32(temperature), (f32(2) * (i // 2) / f32(half)).astype(f32)).astype(f32)

    def encode(pos: np.ndarray) -> np.ndarray:
        p = pos[:, None] / dim_t
        return np.stack([np.sin(p[:, 0::2]), np.cos(p[:, 1::2])], axis=2).reshape(len(pos), half)

    pos_y = np.broadcast_to(encode(y)[:, None, :], (h, w, half))
    pos_x = np.broadcast_to(encode(x)[None, :, :], (h, w, half))
    return np.concatenate([pos_y, pos_x], axis=-1).astype(f32)


class PositionEmbeddingSine:
    """The encoding as a callable on feature maps: ``(B, H, W, C)`` -> ``(B, H, W, num_pos_feats)``."""

    def __init__(
        self, num_pos_feats: int, temperature: float = 10000.0, normalize: bool = True, scale: float | None = None
    ) -> None:
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W D"]:
        b, h, w = x.shape[:3]
        pe = sine_position_encoding(h, w, self.num_pos_feats, self.temperature, self.normalize, self.scale)
        return jnp.broadcast_to(jnp.asarray(pe, x.dtype), (b, h, w, self.num_pos_feats))
