"""Reduced precision: bfloat16 weights and matrix-product operands, fp32 everywhere else.

fp32 is the default and the only mode held to the reference's parity bars. :func:`cast_model`
gives the mixed-precision variant: parameters (``nnx.Param``) stored in bf16, every Linear /
Conv / ConvTranspose multiplying bf16 operands with fp32 accumulation and fp32 output; the
attention products (q k^T, rel-pos terms, attention times v) take those fp32 outputs and so run in
fp32, as do LayerNorm, softmax, GELU, residual sums, the positional-encoding buffer and
pre/post-processing. This halves parameter memory and runs the matrix products at the hardware's bf16 rate
(tensor cores; AVX512-BF16 on CPUs that have it). Its measured loss against fp32 is in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sam_jax.models.sam.model import Sam

# Modules whose products run on bf16 operands (their ``dtype``) with fp32 results.
_MATMUL_MODULES = (nnx.Linear, nnx.Conv, nnx.ConvTranspose)


def cast_params(params: nnx.State, dtype: jnp.dtype) -> nnx.State:
    """``params`` with every floating-point array cast to ``dtype`` (others left alone)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def cast_model(model: Sam, dtype: jnp.dtype = jnp.bfloat16) -> Sam:
    """A copy of ``model`` with its parameters in ``dtype`` and its Linear / Conv /
    ConvTranspose layers multiplying ``dtype`` operands into fp32 results (see module doc).

    ``model`` itself is left unchanged. Use the copy with :class:`sam_jax.SamPredictor` or the
    functions of :mod:`sam_jax.inference` as usual.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = nnx.merge(graphdef, cast_params(params, dtype), rest)
    for _, module in nnx.iter_modules(out):
        if isinstance(module, _MATMUL_MODULES):
            module.dtype = dtype
            module.preferred_element_type = jnp.float32
    return out
