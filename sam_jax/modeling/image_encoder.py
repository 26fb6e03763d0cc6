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

from sam_jax.config import ImageEncoderConfig
from sam_jax.modeling.common import MLPBlock, gelu, layer_norm, linear_resize_matrix


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


def window_partition(x: Float[Array, "B H W C"], window: int) -> tuple[jax.Array, tuple[int, int]]:
    """Zero-pad bottom/right to a multiple of ``window`` and split into windows.

    Returns ``(B * nH * nW, window, window, C)`` and the padded ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
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

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        b, h, w, c = x.shape
        n, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(b, h * w, 3, n, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, HW, n, d)
        attn = jnp.einsum("bqnd,bknd->bnqk", q * d**-0.5, k)
        if self.use_rel_pos:
            # Decomposed bias from the *unscaled* query, added per query row / column (reference).
            r_q = q.reshape(b, h, w, n, d)
            rel_h = jnp.einsum("bhwnd,hkd->bnhwk", r_q, get_rel_pos(h, h, self.rel_pos_h[...]))
            rel_w = jnp.einsum("bhwnd,wkd->bnhwk", r_q, get_rel_pos(w, w, self.rel_pos_w[...]))
            attn = attn.reshape(b, n, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
            attn = attn.reshape(b, n, h * w, h * w)
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bnqk,bknd->bqnd", attn, v).reshape(b, h, w, c)
        return self.proj(out)


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

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


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

    def __call__(self, x: Float[Array, "B S S 3"]) -> Float[Array, "B g g D"]:
        x = self.embed_patches(x)
        for block in self.blocks:
            x = block(x)
        for layer in self.neck:
            x = layer(x)
        return x
