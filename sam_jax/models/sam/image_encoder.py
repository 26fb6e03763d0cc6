"""ViTDet image encoder: patch embedding, windowed / global attention blocks with decomposed
relative-position bias, and the convolutional neck (reference ``image_encoder.py``).

Everything is channels-last: activations are ``(B, H, W, C)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from sam_jax.models.layers import MLPBlock, gelu, layer_norm, linear_resize_matrix, window_partition, window_unpartition
from sam_jax.models.sam.config import ImageEncoderConfig
from sam_jax.ops import attention as ops
from sam_jax.ops.policy import XLA, ExecutionPolicy


@functools.cache
def _relative_index(q_size: int, k_size: int) -> np.ndarray:
    """``(q_size, k_size)`` row index into the rel-pos table, as ``get_rel_pos`` computes it."""
    q_coords = np.arange(q_size, dtype=np.float32)[:, None] * max(k_size / q_size, 1.0)
    k_coords = np.arange(k_size, dtype=np.float32)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel.astype(np.int64)


def get_rel_pos(q_size: int, k_size: int, rel_pos: Float[Array, "L D"]) -> Float[Array, "Q K D"]:
    """Relative positional embeddings for every (query, key) offset along one axis.

    A table whose length is not ``2 * max(q_size, k_size) - 1`` is first resized with linear
    interpolation, exactly as the reference does (this is what lets other input sizes run).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resize = jnp.asarray(linear_resize_matrix(rel_pos.shape[0], max_rel_dist), rel_pos.dtype)
        rel_pos = jnp.matmul(resize, rel_pos, precision=jax.lax.Precision.HIGHEST)
    return rel_pos[_relative_index(q_size, k_size)]


class Attention(nnx.Module):
    """Multi-head self-attention with decomposed relative-position bias (reference ``Attention``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool,
        use_rel_pos: bool,
        input_size: tuple[int, int],
        rngs: nnx.Rngs,
    ) -> None:
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            init = nnx.initializers.truncated_normal(0.02)
            self.rel_pos_h = nnx.Param(init(rngs.params(), (2 * input_size[0] - 1, self.head_dim)))
            self.rel_pos_w = nnx.Param(init(rngs.params(), (2 * input_size[1] - 1, self.head_dim)))

    def __call__(
        self, x: Float[Array, "B H W C"], window: int = 0, policy: ExecutionPolicy = XLA
    ) -> Float[Array, "B H W C"]:
        """Global attention over ``x``'s grid, or within ``window x window`` windows when
        ``window > 0`` (the grid padded bottom/right as the reference pads it)."""
        h, w = x.shape[1:3]
        qkv = ops.tokenwise(self.qkv, x, policy)
        attend = lambda t: self._attention(t, policy)
        if window > 0:
            # The reference pads the normalised input with zeros, whose qkv is the bias alone:
            # pad the qkv output with it instead of running the layer on padding.
            bias = self.qkv.bias[...] if self.qkv.bias is not None else None
            qkv, padded = window_partition(qkv, window, bias)
            out = window_unpartition(ops.per_window(attend, qkv, policy), window, padded, (h, w))
        else:
            out = attend(qkv)
        return ops.tokenwise(self.proj, out, policy)

    def _attention(self, qkv: Float[Array, "B H W C3"], policy: ExecutionPolicy) -> Float[Array, "B H W C"]:
        b, h, w, _ = qkv.shape
        n, d = self.num_heads, self.head_dim
        q, k, v = qkv.reshape(b, h * w, 3, n, d).transpose(2, 0, 3, 1, 4).reshape(3, b * n, h * w, d)
        rel_h = rel_w = None
        if self.use_rel_pos:
            # Decomposed bias from the *unscaled* query, added per query row / column (reference).
            r_q = q.reshape(b * n, h, w, d)
            rel_h = jnp.einsum("zhwd,hkd->zhwk", r_q, get_rel_pos(h, h, self.rel_pos_h[...])).reshape(b * n, h * w, h)
            rel_w = jnp.einsum("zhwd,wkd->zhwk", r_q, get_rel_pos(w, w, self.rel_pos_w[...])).reshape(b * n, h * w, w)
        out = ops.attention(q * d**-0.5, k, v, rel_h, rel_w, policy)
        return out.reshape(b, n, h, w, d).transpose(0, 2, 3, 1, 4).reshape(b, h, w, n * d)


class Block(nnx.Module):
    """Pre-norm transformer block; windowed when ``window_size > 0``, global otherwise."""

    def __init__(
        self, cfg: ImageEncoderConfig, *, window_size: int, input_size: tuple[int, int], rngs: nnx.Rngs
    ) -> None:
        self.window_size = window_size
        self.norm1 = layer_norm(cfg.embed_dim, cfg.layer_norm_eps, rngs=rngs)
        self.attn = Attention(
            cfg.embed_dim,
            cfg.num_heads,
            qkv_bias=cfg.qkv_bias,
            use_rel_pos=cfg.use_rel_pos,
            input_size=(window_size, window_size) if window_size > 0 else input_size,
            rngs=rngs,
        )
        self.norm2 = layer_norm(cfg.embed_dim, cfg.layer_norm_eps, rngs=rngs)
        self.mlp = MLPBlock(cfg.embed_dim, cfg.mlp_dim, gelu, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"], policy: ExecutionPolicy = XLA) -> Float[Array, "B H W C"]:
        x = x + self.attn(self.norm1(x), window=self.window_size, policy=policy)
        return x + ops.tokenwise(lambda t: self.mlp(self.norm2(t)), x, policy)


class PatchEmbed(nnx.Module):
    """Non-overlapping ``patch x patch`` convolution to ``embed_dim`` channels."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs) -> None:
        p = cfg.patch_size
        self.proj = nnx.Conv(cfg.in_chans, cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", rngs=rngs)

    def __call__(self, x: Float[Array, "B H W 3"]) -> Float[Array, "B h w C"]:
        return self.proj(x)


class ImageEncoderViT(nnx.Module):
    """The image encoder: ``(B, S, S, 3)`` normalised, padded image -> ``(B, S/16, S/16, out_chans)``."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        g = cfg.grid_size
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        if cfg.use_abs_pos:
            # Stored channels-last, as in the official checkpoint: (1, 64, 64, C).
            self.pos_embed = nnx.Param(nnx.initializers.truncated_normal(0.02)(rngs.params(), (1, g, g, cfg.embed_dim)))
        self.blocks = nnx.List(
            [
                Block(
                    cfg,
                    window_size=0 if i in cfg.global_attn_indexes else cfg.window_size,
                    input_size=(g, g),
                    rngs=rngs,
                )
                for i in range(cfg.depth)
            ]
        )
        eps = cfg.layer_norm_eps
        self.neck = nnx.List(
            [
                nnx.Conv(cfg.embed_dim, cfg.out_chans, (1, 1), use_bias=False, rngs=rngs),
                layer_norm(cfg.out_chans, eps, rngs=rngs),
                nnx.Conv(cfg.out_chans, cfg.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs),
                layer_norm(cfg.out_chans, eps, rngs=rngs),
            ]
        )

    def embed_patches(self, x: Float[Array, "B S S 3"]) -> Float[Array, "B g g C"]:
        """Patch embedding plus absolute position embedding."""
        x = self.patch_embed(x)
        if self.cfg.use_abs_pos:
            x = x + self.pos_embed[...]
        return x

    def __call__(self, x: Float[Array, "B S S 3"], policy: ExecutionPolicy = XLA) -> Float[Array, "B g g D"]:
        """``policy`` decides how attention and token-wise layers run (:mod:`sam_jax.ops`)."""
        x = self.embed_patches(x)
        for block in self.blocks:
            x = block(x, policy)
        for layer in self.neck:
            x = layer(x)
        return x
