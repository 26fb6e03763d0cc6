"""Convolutions written as the matmuls they are, where XLA's convolution is the slow way.

``nnx.ConvTranspose`` kernels are stored spatially flipped relative to PyTorch's (lax's
transposed convolution is a dilated correlation; the converter flips them): the functions here
read them in that convention.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float


def conv_transpose_2x2(conv: nnx.ConvTranspose, x: Float[Array, "... C"]) -> Float[Array, "... 2 2 O"]:
    """A 2x2, stride-2 transposed convolution as a matmul: output pixel ``(2i + a, 2j + b)`` of
    input pixel ``(i, j)`` lands at ``[..., a, b, :]``."""
    if conv.kernel_size != (2, 2) or conv.strides != (2, 2):
        raise ValueError(f"expected a 2x2 stride-2 ConvTranspose, got {conv.kernel_size} stride {conv.strides}")
    kernel = conv.kernel[...][::-1, ::-1]  # stored flipped for lax (see convert/rules.py)
    return jnp.einsum("...c,abco->...abo", x, kernel) + conv.bias[...]


def depthwise_conv(conv: nnx.Conv, x: Float[Array, "B H W C"]) -> Float[Array, "B h w C"]:
    """A stride-1 depthwise convolution (``feature_group_count`` = channels, one filter each) as a
    sum of shifted, per-channel scaled copies of the zero-padded input: one fused elementwise
    pass per tap. XLA's CPU depthwise convolution is the slow way (SAM 2's fuser, 7x7 over
    64x64x256: 0.15 s a block against the reference's oneDNN 0.03 s); the order of the sum
    differs from a convolution's only by fp32 rounding."""
    c = x.shape[-1]
    if conv.feature_group_count != c or conv.in_features != c or conv.out_features != c:
        raise ValueError(f"expected a depthwise Conv over {c} channels, got {conv.in_features} -> {conv.out_features}")
    if conv.strides not in (1, (1, 1)) or conv.kernel_dilation not in (1, (1, 1), None):
        raise ValueError(f"expected stride 1 without dilation, got strides {conv.strides}")
    kh, kw = conv.kernel_size
    (pt, pb), (pl, pr) = conv.padding
    kernel = conv.kernel[...][:, :, 0, :]  # (kh, kw, 1, C) -> (kh, kw, C)
    h, w = x.shape[1] + pt + pb - kh + 1, x.shape[2] + pl + pr - kw + 1
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = sum(xp[:, i : i + h, j : j + w, :] * kernel[i, j] for i in range(kh) for j in range(kw))
    return out + conv.bias[...] if conv.bias is not None else out
