"""ViTDet image encoder: patch embedding, windowed / global attention blocks with decomposed
relative-position bias, and the convolutional neck (reference ``image_encoder.py``).

Everything is channels-last: activations are ``(B, H, W, C)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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


# On CPU the encoder runs in cache-sized steps (sequential loops); other backends run each op whole.
# Global attention takes one head and a block of query rows at a time, 2 MiB of fp32 scores: the
# bias add, the softmax passes and the product with v then find the scores in cache, where a
# vit_b global block's whole (12, 4096, 4096) scores are 805 MB of memory traffic per pass.
# Windowed attention takes one window (12 x 196 x 196 scores) at a time.
CPU_SCORE_BLOCK = 1 << 19
# Tokens per step of the token-wise layers (qkv, proj, MLP): a 512-token slice of the MLP's hidden
# activation (6 MiB) stays in cache, where the whole one (50 MB) goes out to memory and back.
CPU_TOKEN_BLOCK = 512


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _map(fn: Callable[..., jax.Array], xs: tuple[jax.Array, ...]) -> jax.Array:
    """``fn`` over the leading axis of ``xs``, one slice at a time (``lax.map``'s result).

    Not ``lax.map`` itself: its output buffer is filled from a constant, which XLA schedules at
    the start of the program, so every loop's output would be live at once (950 MB instead of
    170 MB for vit_b). A fill that reads the input (``x * 0``: XLA keeps float products) is made
    only when the input is.
    """
    step = jax.eval_shape(fn, *(x[0] for x in xs))
    out = jnp.broadcast_to((xs[0].ravel()[0] * 0).astype(step.dtype), (xs[0].shape[0], *step.shape))
    return jax.lax.fori_loop(0, xs[0].shape[0], lambda i, out: out.at[i].set(fn(*(x[i] for x in xs))), out)


def _map_blocks(fn: Callable[..., jax.Array], xs: tuple[jax.Array, ...], block: int) -> jax.Array:
    """``fn(*xs)`` computed ``block`` rows (axis 0) at a time; rows are padded to a multiple of
    ``block`` and the padding dropped from the result."""
    rows = xs[0].shape[0]
    if block >= rows:
        return fn(*xs)
    steps = -(-rows // block)
    pad = [(0, steps * block - rows)]
    xs = tuple(jnp.pad(x, pad + [(0, 0)] * (x.ndim - 1)).reshape(steps, block, *x.shape[1:]) for x in xs)
    out = _map(fn, xs)
    return out.reshape(steps * block, *out.shape[2:])[:rows]


def _tokenwise(fn: Callable[[jax.Array], jax.Array], x: Float[Array, "... C"]) -> Float[Array, "... D"]:
    """``fn``, a per-token layer stack, applied to ``x`` (on CPU ``CPU_TOKEN_BLOCK`` tokens at a
    time; the result is the same)."""
    if not _on_cpu():
        return fn(x)
    out = _map_blocks(fn, (x.reshape(-1, x.shape[-1]),), CPU_TOKEN_BLOCK)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _attend(
    q: Float[Array, "... Q d"],
    k: Float[Array, "... K d"],
    v: Float[Array, "... K d"],
    rel_h: Float[Array, "... Q H"] | None,
    rel_w: Float[Array, "... Q W"] | None,
) -> Float[Array, "... Q d"]:
    """``softmax(q k^T + bias) v`` with the decomposed bias ``rel_h[q, kh] + rel_w[q, kw]``
    (``K = H * W``, key index ``kh * W + kw``) added before the softmax (reference order).

    The softmax's division by its row sums is applied to the ``(Q, d)`` output instead of the
    ``(Q, K)`` weights: one pass less over the scores (10% of a vit_b global attention on CPU),
    the same sums up to fp32 rounding."""
    attn = jnp.einsum("...qd,...kd->...qk", q, k)
    if rel_h is not None:
        attn = attn.reshape(*rel_h.shape, -1) + rel_h[..., None] + rel_w[..., None, :]
        attn = attn.reshape(*q.shape[:-1], -1)
    weights = jnp.exp(attn - jax.lax.stop_gradient(attn.max(axis=-1, keepdims=True)))
    return jnp.einsum("...qk,...kd->...qd", weights, v) / weights.sum(axis=-1, keepdims=True)


def _attention_core(
    q: Float[Array, "Z L d"],
    k: Float[Array, "Z L d"],
    v: Float[Array, "Z L d"],
    rel_h: Float[Array, "Z L H"] | None,
    rel_w: Float[Array, "Z L W"] | None,
) -> Float[Array, "Z L d"]:
    """Attention of ``Z`` independent heads (``q`` already scaled). On CPU, when one head's
    scores exceed ``CPU_SCORE_BLOCK``, a head and a block of query rows at a time: each query row
    still takes its softmax over every key, so the result is the unblocked one."""
    length = q.shape[1]
    if not _on_cpu():
        if rel_h is None:
            # No bias to add: the library kernel (flash attention where the backend has one).
            return jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], scale=1.0)[:, :, 0]
        return _attend(q, k, v, rel_h, rel_w)
    if length * length <= CPU_SCORE_BLOCK:
        return _attend(q, k, v, rel_h, rel_w)

    def one_head(q, k, v, rel_h, rel_w):
        return _map_blocks(lambda *a: _attend(a[0], k, v, *a[1:]), (q, rel_h, rel_w), max(CPU_SCORE_BLOCK // length, 1))

    return _map(one_head, (q, k, v, rel_h, rel_w))


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

    def __call__(self, x: Float[Array, "B H W C"], window: int = 0) -> Float[Array, "B H W C"]:
        """Global attention over ``x``'s grid, or within ``window x window`` windows when
        ``window > 0`` (the grid padded bottom/right as the reference pads it)."""
        h, w = x.shape[1:3]
        qkv = _tokenwise(self.qkv, x)
        if window > 0:
            # The reference pads the normalised input with zeros, whose qkv is the bias alone:
            # pad the qkv output with it instead of running the layer on padding.
            bias = self.qkv.bias[...] if self.qkv.bias is not None else None
            qkv, padded = window_partition(qkv, window, bias)
            out = _map_blocks(self._attention, (qkv,), 1 if _on_cpu() else qkv.shape[0])
            out = window_unpartition(out, window, padded, (h, w))
        else:
            out = self._attention(qkv)
        return _tokenwise(self.proj, out)

    def _attention(self, qkv: Float[Array, "B H W 3C"]) -> Float[Array, "B H W C"]:
        b, h, w, _ = qkv.shape
        n, d = self.num_heads, self.head_dim
        q, k, v = qkv.reshape(b, h * w, 3, n, d).transpose(2, 0, 3, 1, 4).reshape(3, b * n, h * w, d)
        rel_h = rel_w = None
        if self.use_rel_pos:
            # Decomposed bias from the *unscaled* query, added per query row / column (reference).
            r_q = q.reshape(b * n, h, w, d)
            rel_h = jnp.einsum("zhwd,hkd->zhwk", r_q, get_rel_pos(h, h, self.rel_pos_h[...])).reshape(b * n, h * w, h)
            rel_w = jnp.einsum("zhwd,wkd->zhwk", r_q, get_rel_pos(w, w, self.rel_pos_w[...])).reshape(b * n, h * w, w)
        out = _attention_core(q * d**-0.5, k, v, rel_h, rel_w)
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

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        x = x + self.attn(self.norm1(x), window=self.window_size)
        return x + _tokenwise(lambda t: self.mlp(self.norm2(t)), x)


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
