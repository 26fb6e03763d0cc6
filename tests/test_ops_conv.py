"""``sam_jax.ops.conv``: convolutions written as matmuls or shifted sums, against ``nnx`` / lax's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sam_jax.ops.conv import conv_transpose_2x2, depthwise_conv

from conftest import max_abs


@pytest.mark.parametrize(("kernel", "padding", "size"), [(7, 3, 16), (3, 1, 9), (5, 0, 12)])
def test_depthwise_conv_equals_the_grouped_convolution(kernel, padding, size):
    c = 24
    conv = nnx.Conv(c, c, (kernel, kernel), padding=((padding, padding),) * 2, feature_group_count=c, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, size, size + 3, c))
    want = conv(x)
    got = depthwise_conv(conv, x)
    assert got.shape == want.shape
    assert max_abs(got, want) <= 1e-5


def test_depthwise_conv_refuses_other_convolutions():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="depthwise"):
        depthwise_conv(nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0)), x)
    strided = nnx.Conv(4, 4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="stride"):
        depthwise_conv(strided, x)


def test_conv_transpose_2x2_equals_the_transposed_convolution():
    conv = nnx.ConvTranspose(8, 5, (2, 2), strides=(2, 2), padding="VALID", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 6, 7, 8))
    want = conv(x)  # (2, 12, 14, 5)
    got = conv_transpose_2x2(conv, x)  # (2, 6, 7, 2, 2, 5)
    got = jnp.transpose(got, (0, 1, 3, 2, 4, 5)).reshape(want.shape)
    assert max_abs(np.asarray(got), np.asarray(want)) <= 1e-5
