"""Small pieces shared by the encoder, prompt encoder and decoder."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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
    """``num_layers`` linear layers with ReLU between them (reference ``mask_decoder.MLP``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, *, rngs: nnx.Rngs) -> None:
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(dims_in, dims_out, strict=True)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
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
    positions clamped at the edges. Used for rel-pos tables and for mask resizing."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), i0), 1.0 - w1)
    np.add.at(m, (np.arange(out_size), i1), w1)
    return m
