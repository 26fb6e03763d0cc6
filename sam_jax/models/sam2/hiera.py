"""Hiera trunk of SAM 2 (reference ``sam2/modeling/backbones/hieradet.py``).

A 7x7 stride-4 patch embedding, a windowed absolute position embedding, then four stages of
``MultiScaleBlock``s. The first block of stages 2..4 pools its queries 2x2 (inside its
attention windows) and widens the channels and heads; a few blocks attend globally. The output
of every stage is returned, highest resolution first. Everything is channels-last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sam_jax.models.layers import MLP, cubic_resize_matrix, gelu, layer_norm, window_partition, window_unpartition
from sam_jax.models.sam2.config import HieraConfig
from sam_jax.ops import attention as ops
from sam_jax.ops.policy import XLA, ExecutionPolicy


def max_pool(x: Float[Array, "B H W C"], stride: tuple[int, int]) -> Float[Array, "B h w C"]:
    """``nn.MaxPool2d(kernel_size=stride, stride=stride, ceil_mode=False)``: trailing rows and
    columns that do not fill a window are dropped."""
    b, h, w, c = x.shape
    sh, sw = stride
    x = x[:, : h // sh * sh, : w // sw * sw]
    return x.reshape(b, h // sh, sh, w // sw, sw, c).max(axis=(2, 4))


class MultiScaleAttention(nnx.Module):
    """Self-attention over ``(B, H, W, dim)`` tokens, queries optionally max-pooled by ``q_stride``."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None, *, rngs: nnx.Rngs):
        if dim_out % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim_out ({dim_out})")
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nnx.Linear(dim, 3 * dim_out, rngs=rngs)
        self.proj = nnx.Linear(dim_out, dim_out, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"], policy: ExecutionPolicy = XLA) -> Float[Array, "B h w D"]:
        b, h, w, _ = x.shape
        n = self.num_heads
        qkv = ops.tokenwise(self.qkv, x, policy).reshape(b, h, w, 3, n, -1)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        if self.q_stride:
            # Pooled over all heads' channels at once, as the reference reshapes q to (B, H, W, D).
            q = max_pool(q.reshape(b, h, w, -1), self.q_stride)
            q = q.reshape(*q.shape[:3], n, -1)
        hq, wq, d = q.shape[1], q.shape[2], q.shape[-1]
        heads = lambda t: t.reshape(b, -1, n, d).transpose(0, 2, 1, 3).reshape(b * n, -1, d)
        # F.scaled_dot_product_attention: softmax(q k^T / sqrt(head_dim)) v, no mask.
        out = ops.attention(heads(q) * d**-0.5, heads(k), heads(v), None, None, policy)
        out = out.reshape(b, n, hq * wq, d).transpose(0, 2, 1, 3).reshape(b, hq, wq, n * d)
        return ops.tokenwise(self.proj, out, policy)


class MultiScaleBlock(nnx.Module):
    """Pre-norm block: (windowed or global) attention with optional query pooling, then an MLP.

    When the width changes, the shortcut is ``pool(proj(norm1(x)))``. Windows are cut from the
    zero-padded *normalised* input, and the padded tokens take part in attention as keys (the
    reference does not mask them).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        *,
        window_size: int,
        q_stride: tuple[int, int] | None,
        mlp_ratio: float,
        eps: float,
        rngs: nnx.Rngs,
    ) -> None:
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = layer_norm(dim, eps, rngs=rngs)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride, rngs=rngs)
        self.norm2 = layer_norm(dim_out, eps, rngs=rngs)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, act=gelu, rngs=rngs)  # sam2_utils.MLP, GELU
        if dim != dim_out:
            self.proj = nnx.Linear(dim, dim_out, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"], policy: ExecutionPolicy = XLA) -> Float[Array, "B h w D"]:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = max_pool(shortcut, self.q_stride)
        window = self.window_size
        if window > 0:
            x, _ = window_partition(x, window)
            # Windows in steps of about ``policy.score_block`` scores (one head's, per window).
            per_step = max(policy.score_block // (window**4), 1)
            x = ops.per_window(lambda t: self.attn(t, policy), x, policy, per_step)
        else:
            x = self.attn(x, policy)
        if window > 0:
            if self.q_stride:
                window //= self.q_stride[0]  # the windows shrank with the queries
            h, w = shortcut.shape[1:3]
            padded = (h + (-h) % window, w + (-w) % window)
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + ops.tokenwise(lambda t: self.mlp(self.norm2(t)), x, policy)


class PatchEmbed(nnx.Module):
    """``Conv2d(3, embed_dim, 7, stride 4, padding 3)``."""

    def __init__(self, cfg: HieraConfig, *, rngs: nnx.Rngs) -> None:
        k, s, p = cfg.patch_kernel_size, cfg.patch_stride, cfg.patch_padding
        self.proj = nnx.Conv(cfg.in_chans, cfg.embed_dim, (k, k), strides=(s, s), padding=((p, p), (p, p)), rngs=rngs)

    def __call__(self, x: Float[Array, "B S S 3"]) -> Float[Array, "B g g C"]:
        return self.proj(x)


class Hiera(nnx.Module):
    """``(B, S, S, 3)`` normalised image -> stage outputs ``[(B, S/4, S/4, C), (B, S/8, S/8, 2C),
    (B, S/16, S/16, 4C), (B, S/32, S/32, 8C)]`` (with the default three pooling stages)."""

    def __init__(self, cfg: HieraConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        # Stored channels-last: (1, h, w, C) where the checkpoint has (1, C, h, w).
        bh, bw = cfg.window_pos_embed_bkg_spatial_size
        w0 = cfg.window_spec[0]
        init = nnx.initializers.truncated_normal(0.02)
        self.pos_embed = nnx.Param(init(rngs.params(), (1, bh, bw, cfg.embed_dim)))
        self.pos_embed_window = nnx.Param(init(rngs.params(), (1, w0, w0, cfg.embed_dim)))
        self.blocks = nnx.List(
            [
                MultiScaleBlock(
                    dim,
                    dim_out,
                    heads,
                    window_size=window,
                    q_stride=cfg.q_stride if pool else None,
                    mlp_ratio=cfg.mlp_ratio,
                    eps=cfg.layer_norm_eps,
                    rngs=rngs,
                )
                for dim, dim_out, heads, window, pool in cfg.block_specs()
            ]
        )

    def get_pos_embed(self, h: int, w: int) -> Float[Array, "1 h w C"]:
        """``_get_pos_embed``: the background embedding resized bicubically to ``(h, w)`` plus
        the window embedding tiled over it (``h``, ``w`` must be multiples of the window)."""
        window = self.pos_embed_window[...]
        wh, ww = window.shape[1:3]
        if h % wh or w % ww:
            raise ValueError(f"patch grid {(h, w)} must be a multiple of the first window {(wh, ww)}")
        bkg = self.pos_embed[...]
        mh = jnp.asarray(cubic_resize_matrix(bkg.shape[1], h), bkg.dtype)
        mw = jnp.asarray(cubic_resize_matrix(bkg.shape[2], w), bkg.dtype)
        hi = jax.lax.Precision.HIGHEST
        bkg = jnp.einsum("hy,byxc,wx->bhwc", mh, bkg, mw, precision=hi)
        return bkg + jnp.tile(window, (1, h // wh, w // ww, 1))

    def __call__(self, x: Float[Array, "B S S 3"], policy: ExecutionPolicy = XLA) -> list[Float[Array, "B _h _w _C"]]:
        """``policy`` decides how attention and token-wise layers run (:mod:`sam_jax.ops`)."""
        x = self.patch_embed(x)
        x = x + self.get_pos_embed(*x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, policy)
            if i in self.cfg.stage_ends:
                outputs.append(x)
        return outputs
