"""FPN neck of SAM 2 (reference ``sam2/modeling/backbones/image_encoder.py``, ``FpnNeck``).

A 1x1 lateral convolution per trunk level to ``d_model`` channels; going from the lowest
resolution up, levels in ``fpn_top_down_levels`` add the previous (coarser) output upsampled 2x.
No output convolution. Each output comes with its sine position encoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sam_jax.models.layers import linear_resize_matrix
from sam_jax.models.sam2.config import FpnNeckConfig
from sam_jax.models.sam2.position_encoding import PositionEmbeddingSine


def upsample2x(x: Float[Array, "B H W C"], mode: str) -> Float[Array, "B 2*H 2*W C"]:
    """``F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False if bilinear, antialias=False)``."""
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    h, w = x.shape[1:3]
    mh = jnp.asarray(linear_resize_matrix(h, 2 * h), x.dtype)
    mw = jnp.asarray(linear_resize_matrix(w, 2 * w), x.dtype)
    return jnp.einsum("Hh,bhwc,Ww->bHWc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


class Lateral(nnx.Module):
    """``nn.Sequential(conv=Conv2d(dim, d_model, kernel_size))``: one lateral branch."""

    def __init__(self, dim: int, cfg: FpnNeckConfig, *, rngs: nnx.Rngs) -> None:
        k, s, p = cfg.kernel_size, cfg.stride, cfg.padding
        self.conv = nnx.Conv(dim, cfg.d_model, (k, k), strides=(s, s), padding=((p, p), (p, p)), rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W D"]:
        return self.conv(x)


class FpnNeck(nnx.Module):
    """Trunk levels (highest resolution first) -> ``(features, position encodings)``, same order.

    ``convs[j]`` serves ``backbone_channel_list[j]``, which lists the levels lowest resolution
    first: level ``i`` of ``n + 1`` uses ``convs[n - i]`` (the reference's numbering).
    """

    def __init__(self, cfg: FpnNeckConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.convs = nnx.List([Lateral(dim, cfg, rngs=rngs) for dim in cfg.backbone_channel_list])
        self.position_encoding = PositionEmbeddingSine(
            cfg.pos_num_pos_feats, cfg.pos_temperature, cfg.pos_normalize, cfg.pos_scale
        )

    def __call__(
        self, xs: list[Float[Array, "B _H _W _C"]]
    ) -> tuple[list[Float[Array, "B _H _W D"]], list[Float[Array, "B _H _W D"]]]:
        # Levels differ in size (and, on the way in, in width): those axes are not bound across the list.
        n = len(self.convs) - 1
        if len(xs) != n + 1:
            raise ValueError(f"expected {n + 1} trunk levels, got {len(xs)}")
        out: list = [None] * (n + 1)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.cfg.fpn_top_down_levels and prev is not None:
                prev = lateral + upsample2x(prev, self.cfg.fpn_interp_model)
                if self.cfg.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
        return out, [self.position_encoding(x) for x in out]
