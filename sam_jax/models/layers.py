"""Small pieces shared by the encoder, prompt encoder and decoder."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float


def gelu(x: jax.Array) -> jax.Array:
    """``torch.nn.GELU()``: the exact form ``x/2 * (1 + erf(x/sqrt(2)))``, written as PyTorch
    writes it. ``jax.nn.gelu`` defaults to the tanh approximation, and its exact form goes
    through ``erfc``, which XLA:CPU evaluates about 2x slower than ``erf`` (same values to fp32
    rounding; this form also matches PyTorch's rounding for large negative ``x``)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))


class Buffer(nnx.Variable):
    """A persistent, non-trainable tensor (a PyTorch ``register_buffer``)."""


def layer_norm(dim: int, eps: float, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis; also serves as the reference's ``LayerNorm2d`` in NHWC.

    ``use_fast_variance=False`` computes ``mean((x - mean)**2)`` as PyTorch does, instead of
    ``mean(x**2) - mean**2``, which loses digits on large activations.
    """
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


class MLPBlock(nnx.Module):
    """Transformer feed-forward: ``lin2(act(lin1(x)))`` (reference ``common.MLPBlock``)."""

    def __init__(self, dim: int, mlp_dim: int, act: Callable[[jax.Array], jax.Array], *, rngs: nnx.Rngs) -> None:
        self.lin1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
        self.lin2 = nnx.Linear(mlp_dim, dim, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nnx.Module):
    """``num_layers`` linear layers with ``act`` between them (reference ``mask_decoder.MLP``: ReLU;
    ``sam2_utils.MLP``: any activation)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        *,
        act: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        rngs: nnx.Rngs,
    ) -> None:
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(dims_in, dims_out, strict=True)])
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


def sequential(layers: nnx.List, x: jax.Array) -> jax.Array:
    """Apply a list of modules and plain functions in order (a ``torch.nn.Sequential``)."""
    for layer in layers:
        x = layer(x)
    return x


def masked_softmax(logits: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """Softmax over the last axis; keys where ``key_mask`` is False get exactly zero weight.

    ``key_mask`` broadcasts against ``logits`` (e.g. ``(B, 1, 1, Nk)``). At least one key per row
    must be valid.
    """
    if key_mask is not None:
        logits = jnp.where(key_mask, logits, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


@functools.lru_cache(maxsize=256)
def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix of PyTorch's ``F.interpolate`` in ``linear`` /
    ``bilinear`` mode with ``align_corners=False`` along one axis: no antialiasing, source
    positions clamped at the edges.

    Source positions and weights are computed in float32 as ATen's CPU kernel computes them
    (``area_pixel_compute_source_index`` with a float scale), so the weights are torch's exactly;
    only the matrix that holds them is float64 (for composing resizes).
    """
    f = np.float32
    scale = f(in_size) / f(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=f) + f(0.5)) - f(0.5), f(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(f), f(0.0), f(1.0))
    w0 = f(1.0) - w1
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), i0), w0.astype(np.float64))
    np.add.at(m, (np.arange(out_size), i1), w1.astype(np.float64))
    return m


# Bicubic taps' coefficient (PyTorch's and OpenCV's).
_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """``(..., 4)`` weights of the taps at offsets -1, 0, 1, 2 for fractional position ``t``
    (PyTorch's ``get_cubic_upsample_coefficients``)."""
    a = _CUBIC_A

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def cubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix of PyTorch's ``F.interpolate(size=..., mode="bicubic",
    align_corners=False)`` along one axis: no antialiasing, source position ``(i + 0.5) * in/out -
    0.5`` (not clamped, unlike linear), taps outside the input clamped to the edge."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    i0 = np.floor(src).astype(np.int64)
    weights = _cubic_weights(src - i0)
    taps = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
    return m


def window_partition(
    x: Float[Array, "B H W C"], window: int, fill: Float[Array, " C"] | None = None
) -> tuple[jax.Array, tuple[int, int]]:
    """Pad bottom/right to a multiple of ``window`` and split into windows.

    Padding is zero, or the vector ``fill`` at every padded position. Returns
    ``(B * nH * nW, window, window, C)`` and the padded ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        if fill is not None:
            real = (jnp.arange(h + pad_h) < h)[:, None] & (jnp.arange(w + pad_w) < w)[None, :]
            x = jnp.where(real[:, :, None], x, fill)
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: Float[Array, "N w w C"], window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> Float[Array, "B H W C"]:
    """Inverse of :func:`window_partition`, dropping the padding."""
    (hp, wp), (h, w) = padded_hw, hw
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, c)[:, :h, :w, :]
