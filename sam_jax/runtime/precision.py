"""Reduced precision: bfloat16 weights and matrix-product operands, fp32 everywhere else.

fp32 is the default and the only mode held to the reference's parity bars. :func:`cast_model`
gives the mixed-precision variant of a model of any family (SAM 1's ``Sam``, SAM 2's ``Sam2`` and
its video parts): parameters (``nnx.Param``) stored in bf16, every Linear / Conv / ConvTranspose
multiplying bf16 operands with fp32 accumulation and fp32 output; the attention products (q k^T,
rel-pos terms, attention times v) take those fp32 outputs and so run in fp32, as do LayerNorm,
softmax, GELU, residual sums, sinusoidal/RoPE encodings and pre/post-processing. Parameters used
outside those layers (embeddings, SAM 1's ``pos_embed`` and ``rel_pos`` tables, SAM 2's
``no_mem_embed``) are stored in bf16 and promoted to fp32 where they meet activations; SAM 2's
Hiera resizes its background position embedding in its parameters' dtype, so in bf16. This halves
parameter memory and runs the matrix products at the hardware's bf16 rate (tensor cores;
AVX512-BF16 on CPUs that have it). Its measured loss against fp32 is in ``benchmarks/RESULTS.md``
(SAM 1, vit_b) and ``tests/test_precision.py`` (both families, real photos).
"""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

# Modules whose products run on bf16 operands (their ``dtype``) with fp32 results.
_MATMUL_MODULES = (nnx.Linear, nnx.Conv, nnx.ConvTranspose)
# What ``dtype=`` may name where a model is loaded or served (fp32 is the default).
PRECISIONS = ("float32", "bfloat16")

M = TypeVar("M", bound=nnx.Module)


def resolve_dtype(dtype: str | jnp.dtype | type | None) -> jnp.dtype:
    """``dtype`` as a NumPy dtype, checked to be one of :data:`PRECISIONS` (None means fp32).

    Raises:
      ValueError: for any other dtype (``float16``, integers, unknown names).
    """
    if dtype is None:
        return jnp.dtype(jnp.float32)
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}") from e
    if resolved.name not in PRECISIONS:
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {resolved.name}")
    return resolved


def cast_params(params: nnx.State, dtype: jnp.dtype) -> nnx.State:
    """``params`` with every floating-point array cast to ``dtype`` (others left alone)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def cast_model(model: M, dtype: jnp.dtype = jnp.bfloat16) -> M:
    """A copy of ``model`` (any family) with its parameters in ``dtype`` and its Linear / Conv /
    ConvTranspose layers multiplying ``dtype`` operands into fp32 results (see module doc).

    ``model`` itself is left unchanged. Use the copy as the original: with
    :class:`sam_jax.SamPredictor` / :class:`sam_jax.SAM2ImagePredictor`, the mask generators or
    the functions of :mod:`sam_jax.inference`.

    Raises:
      TypeError: if ``model`` is not a Flax NNX module or ``dtype`` is not a floating-point type.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"cast_model needs a Flax NNX model, got {type(model).__name__}")
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise TypeError(f"cast_model needs a floating-point dtype, got {jnp.dtype(dtype).name}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return set_matmul_dtype(nnx.merge(graphdef, cast_params(params, dtype), rest), dtype)


def set_matmul_dtype(model: M, dtype: jnp.dtype) -> M:
    """Make ``model``'s Linear / Conv / ConvTranspose layers multiply ``dtype`` operands into fp32
    results, in place; returns ``model``. For a model whose parameters are already in ``dtype``
    (:func:`abstract_state`); :func:`cast_model` does both steps."""
    dtype = jnp.dtype(dtype)  # one spelling (jnp.bfloat16 is a type, not a dtype): one jit cache entry
    for _, module in nnx.iter_modules(model):
        if isinstance(module, _MATMUL_MODULES):
            module.dtype = dtype
            module.preferred_element_type = jnp.float32
    return model


def abstract_state(abstract_model: nnx.Module, dtype: jnp.dtype) -> dict:
    """Shapes and dtypes of every variable of ``abstract_model`` (an ``nnx.eval_shape`` model) as
    a nested pure dict of ``jax.ShapeDtypeStruct``, floating-point parameters (``nnx.Param``) in
    ``dtype``: the target to restore a checkpoint into, so that a bf16 model is read as bf16
    without an fp32 copy on the device."""

    def to(v: jax.ShapeDtypeStruct, cast: bool) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(v.shape, dtype if cast and jnp.issubdtype(v.dtype, jnp.floating) else v.dtype)

    _, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    params = jax.tree_util.tree_map(lambda v: to(v, True), params)
    rest = jax.tree_util.tree_map(lambda v: to(v, False), rest)
    return nnx.to_pure_dict(nnx.merge_state(params, rest))
