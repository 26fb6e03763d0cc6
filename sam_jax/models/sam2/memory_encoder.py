"""Memory encoder of SAM 2 (reference ``sam2/modeling/memory_encoder.py``).

A frame's memory is its stride-16 features fused with its predicted mask: the mask (at the image
size) is downsampled 16x by strided convolutions (``MaskDownSampler``), added to the projected
features, mixed by ConvNeXt blocks (``Fuser`` of ``CXBlock``), and projected to ``out_dim``
channels; the memory's position encoding is the sine encoding of its grid. Channels-last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sam_jax.models.layers import gelu, layer_norm, sequential
from sam_jax.models.sam2.config import CXBlockConfig, MaskDownSamplerConfig, MemoryEncoderConfig
from sam_jax.models.sam2.position_encoding import PositionEmbeddingSine
from sam_jax.ops.conv import depthwise_conv


def _conv(cin: int, cout: int, kernel: int, stride: int, padding: int, *, groups: int = 1, rngs: nnx.Rngs) -> nnx.Conv:
    """``nn.Conv2d(cin, cout, kernel, stride, padding, groups)`` (symmetric zero padding, bias)."""
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        rngs=rngs,
    )


class MaskDownSampler(nnx.Module):
    """``(B, S, S, 1)`` mask -> ``(B, S/total_stride, S/total_stride, embed_dim)``: blocks of
    conv (channels x stride**2), LayerNorm2d, GELU, then a 1x1 conv (``encoder.0`` ... ``encoder.3n``)."""

    def __init__(self, cfg: MaskDownSamplerConfig, *, rngs: nnx.Rngs) -> None:
        layers: list = []
        cin = 1
        for _ in range(cfg.num_layers):
            cout = cin * cfg.stride**2
            layers += [
                _conv(cin, cout, cfg.kernel_size, cfg.stride, cfg.padding, rngs=rngs),
                layer_norm(cout, cfg.layer_norm_eps, rngs=rngs),  # LayerNorm2d, channels-last
                gelu,  # nn.GELU(): exact
            ]
            cin = cout
        layers.append(_conv(cin, cfg.embed_dim, 1, 1, 0, rngs=rngs))
        self.encoder = nnx.List(layers)

    def __call__(self, x: Float[Array, "B S S 1"]) -> Float[Array, "B g g C"]:
        return sequential(self.encoder, x)


class CXBlock(nnx.Module):
    """ConvNeXt block: depthwise conv, LayerNorm2d, Linear 4x, GELU, Linear, layer scale; residual."""

    def __init__(self, cfg: CXBlockConfig, *, rngs: nnx.Rngs) -> None:
        d = cfg.dim
        groups = d if cfg.use_dwconv else 1
        self.dwconv = _conv(d, d, cfg.kernel_size, 1, cfg.padding, groups=groups, rngs=rngs)
        self.norm = layer_norm(d, cfg.layer_norm_eps, rngs=rngs)
        self.pwconv1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.pwconv2 = nnx.Linear(4 * d, d, rngs=rngs)
        self.gamma = (
            nnx.Param(jnp.full((d,), cfg.layer_scale_init_value, jnp.float32))
            if cfg.layer_scale_init_value > 0
            else None
        )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        mixed = depthwise_conv(self.dwconv, x) if self.dwconv.feature_group_count > 1 else self.dwconv(x)
        y = self.pwconv2(gelu(self.pwconv1(self.norm(mixed))))
        if self.gamma is not None:
            y = self.gamma[...] * y
        return x + y


class Fuser(nnx.Module):
    """An optional 1x1 input projection (``proj``), then ``num_layers`` :class:`CXBlock`."""

    def __init__(self, cfg: MemoryEncoderConfig, *, rngs: nnx.Rngs) -> None:
        d = cfg.fuser_layer.dim
        self.proj = _conv(d, d, 1, 1, 0, rngs=rngs) if cfg.fuser_input_projection else None
        self.layers = nnx.List([CXBlock(cfg.fuser_layer, rngs=rngs) for _ in range(cfg.fuser_num_layers)])

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        if self.proj is not None:
            x = self.proj(x)
        return sequential(self.layers, x)


class MemoryEncoder(nnx.Module):
    """Image features and a mask -> the frame's memory features and their position encoding."""

    def __init__(self, cfg: MemoryEncoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.mask_downsampler = MaskDownSampler(cfg.mask_downsampler, rngs=rngs)
        self.pix_feat_proj = _conv(cfg.in_dim, cfg.in_dim, 1, 1, 0, rngs=rngs)
        self.fuser = Fuser(cfg, rngs=rngs)
        self.out_proj = _conv(cfg.in_dim, cfg.out_dim, 1, 1, 0, rngs=rngs) if cfg.out_dim != cfg.in_dim else None
        self.position_encoding = PositionEmbeddingSine(
            cfg.pos_num_pos_feats, cfg.pos_temperature, cfg.pos_normalize, cfg.pos_scale
        )

    def __call__(
        self,
        pix_feat: Float[Array, "B H W C"],
        masks: Float[Array, "B S S 1"],
        skip_mask_sigmoid: bool = False,
    ) -> tuple[Float[Array, "B H W D"], Float[Array, "B H W P"]]:
        """``(vision_features, vision_pos_enc)``: the memory ``(B, H, W, out_dim)`` of features
        ``pix_feat`` and mask logits ``masks`` (``S = 16 H``; probabilities with ``skip_mask_sigmoid``),
        and its sine encoding ``(B, H, W, pos_num_pos_feats)``."""
        if not skip_mask_sigmoid:
            masks = jax.nn.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        if masks.shape[1:3] != pix_feat.shape[1:3]:
            raise ValueError(
                f"the downsampled mask {masks.shape[1:3]} does not match the features {pix_feat.shape[1:3]}"
            )
        x = self.fuser(self.pix_feat_proj(pix_feat) + masks)
        if self.out_proj is not None:
            x = self.out_proj(x)
        return x, self.position_encoding(x)
