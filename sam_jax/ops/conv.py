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
