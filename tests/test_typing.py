"""The shape annotations are checked while the tests run (pyproject's ``--jaxtyping-packages``), so
they cannot drift from what the code does: a call that breaks one fails here."""

from __future__ import annotations

import jax.numpy as jnp
import jaxtyping
import pytest

from sam_jax.core.image import valid_region
from sam_jax.ops.attention import attention
from sam_jax.ops.policy import XLA


def test_a_wrong_shape_is_refused_by_the_annotation():
    with pytest.raises(jaxtyping.TypeCheckError, match="input_sizes"):
        valid_region(jnp.zeros((2, 3), jnp.int32), 4)  # annotated Int[Array, "B 2"]


def test_inconsistent_dimensions_across_arguments_are_refused():
    q = jnp.zeros((2, 6, 4))
    with pytest.raises(jaxtyping.TypeCheckError):
        attention(q, jnp.zeros((3, 5, 4)), jnp.zeros((3, 5, 4)), None, None, XLA)  # "Z Q d" / "Z K d": Z differs


def test_consistent_calls_pass():
    q = jnp.ones((2, 6, 4))
    assert attention(q, q, q, None, None, XLA).shape == (2, 6, 4)
    assert valid_region(jnp.array([[2, 3]], jnp.int32), 4).shape == (1, 4, 4)
