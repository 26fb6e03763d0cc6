"""2-D axial rotary position encoding of SAM 2's memory attention (reference
``sam2/modeling/position_encoding.py``: ``compute_axial_cis``, ``apply_rotary_enc``).

The reference holds the rotations as complex numbers ``cis = exp(i * angle)`` and multiplies
channel pairs ``(x[2j], x[2j+1])`` read as ``x[2j] + i x[2j+1]``. Here the same rotation is
written with real ``cos``/``sin`` tables: ``(a, b) -> (a cos - b sin, a sin + b cos)``.

A head of width ``dim`` has ``dim / 2`` pairs: the first ``dim / 4`` rotate with the token's column
``x``, the last ``dim / 4`` with its row ``y`` (tokens in row-major order, ``t = y * end_x + x``),
at frequencies ``theta ** (-4k / dim)``. The tables depend only on the grid, so they are computed
once in NumPy (float32, the reference's order of operations) and enter traced code as constants.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


@functools.lru_cache(maxsize=32)
def axial_rotations(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)``, each ``(end_x * end_y, dim / 2)`` float32: ``compute_axial_cis`` as real parts
    and imaginary parts (``torch.polar(1, angle)``)."""
    if dim % 4:
        raise ValueError(f"axial RoPE needs a head width that is a multiple of 4, got {dim}")
    f32 = np.float32
    exponents = np.arange(0, dim, 4, dtype=f32)[: dim // 4] / f32(dim)
    # torch's float32 pow rounds the exact power (NumPy's float32 power is 1 ulp off for some).
    freqs = (f32(1.0) / np.power(np.float64(theta), exponents.astype(np.float64)).astype(f32)).astype(f32)
    t = np.arange(end_x * end_y)
    t_x, t_y = (t % end_x).astype(f32), (t // end_x).astype(f32)
    angles = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1).astype(f32)
    return np.cos(angles).astype(f32), np.sin(angles).astype(f32)


def grid_rotations(
    num_tokens: int, dim: int, feat_sizes: tuple[int, int], theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """The rotations ``RoPEAttention.forward`` uses for ``num_tokens`` queries: those of
    ``feat_sizes`` (``(end_x, end_y)``) when they hold that many tokens, else those of the square
    grid ``sqrt(num_tokens)`` (the reference recomputes them for other grid sizes)."""
    end_x, end_y = feat_sizes
    if end_x * end_y == num_tokens:
        return axial_rotations(dim, end_x, end_y, theta)
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"RoPE attention needs the queries of a square grid (or of feat_sizes {feat_sizes}), got {num_tokens}"
        )
    return axial_rotations(dim, side, side, theta)


def rotate(
    x: Float[Array, "... N d"], cos: Float[np.ndarray, "N half"], sin: Float[np.ndarray, "N half"]
) -> Float[Array, "... N d"]:
    """Rotate consecutive channel pairs of ``x`` by the per-token angles (``apply_rotary_enc`` for
    one of ``q``/``k``): ``x[..., 2j] + i x[..., 2j+1]`` times ``cos + i sin``."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = jnp.asarray(cos, x.dtype), jnp.asarray(sin, x.dtype)
    return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


def repeat_rotations(
    cos: Float[np.ndarray, "N half"], sin: Float[np.ndarray, "N half"], num_keys: int
) -> tuple[Float[np.ndarray, "K half"], Float[np.ndarray, "K half"]]:
    """Tile the query grid's rotations over ``num_keys = r * N`` keys (``repeat_freqs_k``: ``r``
    memory frames of the same grid, frame-major)."""
    n = cos.shape[0]
    if num_keys % n:
        raise ValueError(f"rotated keys ({num_keys}) must be a whole number of frames of {n} tokens")
    r = num_keys // n
    return np.tile(cos, (r, 1)), np.tile(sin, (r, 1))
