"""Fused (flash) attention in Pallas with SAM's decomposed relative-position bias added per tile.

``softmax(q k^T + bias) v`` for ``Z`` independent heads, where the bias of query ``i`` and key
``kh * W + kw`` is ``rel_h[i, kh] + rel_w[i, kw]`` (the image encoder's decomposed bias). One program
takes ``block_q`` query rows of one head and loops over key tiles with an online softmax (running
max and row sum, fp32), so neither the ``(Q, K)`` scores nor the ``(Q, K)`` bias ever exist: each
tile's bias is built in registers from a ``(block_q, rows)`` slice of ``rel_h`` and a
``(block_q, cols)`` slice of ``rel_w`` (a broadcast sum and a reshape; no gather).

Layout. Keys are laid out on a ``(H, Wp)`` grid, each image row padded to ``Wp``, the next power of
two of ``W``; a key tile is then ``block_k // Wp`` whole rows (or, when ``block_k < Wp``, a
``block_k``-wide part of one row), so within a tile ``kh`` and ``kw`` are ranges, not gathers.
Padded keys (columns ``>= W``, rows ``>= H``) are masked through the bias: the padded entries of
``rel_w`` / ``rel_h`` hold a large negative number, whose ``exp`` is 0. Without a bias the keys are
padded to a tile multiple and masked by index. Queries are padded to a multiple of ``block_q`` and
head dims to a power of two (>= 16) with zeros (zero columns change no dot product); padding is
dropped from the result. Scores, softmax and accumulators are fp32 whatever the input dtype
(bf16 inputs: the probabilities are cast to bf16 for the ``p @ v`` product, as flash attention
does, with fp32 accumulation); fp32 inputs are multiplied at full fp32 precision (IEEE, not TF32).

Backends. Written for Pallas' GPU (Triton) backend: power-of-two tiles >= 16, 2-D dots, ``where``
and reshapes only. ``interpret=True`` runs it anywhere (the CPU tests). Without a GPU, the tests
lower it for CUDA (``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` gives XLA's
Triton custom call) and compile the emitted Triton IR to an sm_90 cubin with the ``triton``
package and its ptxas (no register spills at the default tiles and warp counts). TPU (Mosaic) is
not verified: jax lowers it to a Mosaic custom call when the Triton compiler params are left out,
but Mosaic's own compile happens in libtpu (absent here), and the bias tile's lane-axis dynamic
slices and reshape are what it is likeliest to refuse; the policy keeps XLA on TPUs.

Inference only: the kernel has no VJP (``jax.grad`` with respect to its operands raises
``ValueError``); a call whose operands carry no gradient, such as a frozen image encoder inside a
decoder's training step, differentiates fine.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float

# Bias of a padded key: exp(score + 2 * _MASKED - max) is exactly 0 in fp32, and 2 * _MASKED
# is finite, so masked tiles never make inf - inf.
_MASKED = -1e30


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def default_blocks(queries: int, keys: int, head_dim: int) -> tuple[int, int]:
    """``(block_q, block_k)`` for a problem size: small tiles for SAM's 14x14 windows (196 keys
    pad to 224, not 256), larger ones for global attention. A starting point, not GPU-tuned."""
    block_q = 32 if queries <= 256 else (128 if head_dim <= 64 else 64)
    block_k = 32 if keys <= 256 else 64
    return min(block_q, max(_pow2(queries), 16)), min(block_k, max(_pow2(keys), 16))


def _kernel(
    q_ref,
    k_ref,
    v_ref,
    *refs,
    block_k: int,
    num_tiles: int,
    keys: int,
    row_pad: int | None,
    precision: lax.Precision,
):
    """One ``(block_q, d)`` output tile: an online softmax over ``num_tiles`` key tiles.

    ``row_pad`` is ``Wp`` (keys on an ``(H, Wp)`` grid, bias from ``rel_h``/``rel_w`` refs), or None
    (no bias; keys past ``keys`` masked by index)."""
    if row_pad is None:
        (o_ref,) = refs
    else:
        rh_ref, rw_ref, o_ref = refs
    q = q_ref[...]
    block_q = q.shape[0]
    dims = (((1,), (1,)), ((), ()))
    if row_pad is not None:
        rows, cols = max(block_k // row_pad, 1), min(block_k, row_pad)
        rw_whole = rw_ref[...] if cols == row_pad else None  # every tile spans whole rows

    def body(t, carry):
        acc, row_max, row_sum = carry
        start = pl.multiple_of(t * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]
        s = lax.dot_general(q, k, dims, precision=precision, preferred_element_type=jnp.float32)
        if row_pad is None:
            if keys % block_k:
                index = start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
                s = jnp.where(index < keys, s, _MASKED)
        else:
            kh = lax.div(start, row_pad)
            rh = rh_ref[:, pl.ds(kh, rows)]
            rw = rw_whole if rw_whole is not None else rw_ref[:, pl.ds(lax.rem(start, row_pad), cols)]
            s = s + (rh[:, :, None] + rw[:, None, :]).reshape(block_q, block_k)
        new_max = jnp.maximum(row_max, s.max(axis=1))
        correction = jnp.exp(row_max - new_max)
        p = jnp.exp(s - new_max[:, None])
        v = v_ref[pl.ds(start, block_k), :]
        pv = lax.dot(p.astype(v.dtype), v, precision=precision, preferred_element_type=jnp.float32)
        return acc * correction[:, None] + pv, new_max, row_sum * correction + p.sum(axis=1)

    init = (
        jnp.zeros((block_q, q.shape[1]), jnp.float32),
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, _, row_sum = lax.fori_loop(0, num_tiles, body, init)
    o_ref[...] = (acc / row_sum[:, None]).astype(o_ref.dtype)


def _check(q, k, v, rel_h, rel_w) -> None:
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q, k, v must be (Z, Q, d), (Z, K, d), (Z, K, d); got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q, k, v must be (Z, Q, d), (Z, K, d), (Z, K, d); got {q.shape}, {k.shape}, {v.shape}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if (rel_h is None) != (rel_w is None):
        raise ValueError("rel_h and rel_w must be given together (or neither)")
    if rel_h is not None:
        z, queries = q.shape[:2]
        if rel_h.ndim != 3 or rel_w.ndim != 3 or rel_h.shape[:2] != (z, queries) or rel_w.shape[:2] != (z, queries):
            raise ValueError(
                f"rel_h, rel_w must be ({z}, {queries}, H), ({z}, {queries}, W); got {rel_h.shape}, {rel_w.shape}"
            )
        if rel_h.shape[2] * rel_w.shape[2] != k.shape[1]:
            raise ValueError(
                f"rel_h, rel_w give an H x W = {rel_h.shape[2]} x {rel_w.shape[2]} key grid; k has {k.shape[1]} keys"
            )


@functools.partial(jax.jit, static_argnames=("block_q", "block_k", "interpret", "num_warps", "num_stages"))
def flash_attention(
    q: Float[Array, "Z Q d"],
    k: Float[Array, "Z K d"],
    v: Float[Array, "Z K d"],
    rel_h: Float[Array, "Z Q H"] | None = None,
    rel_w: Float[Array, "Z Q W"] | None = None,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool = False,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> Float[Array, "Z Q d"]:
    """``softmax(q k^T + bias) v`` per head ``z`` (``q`` already scaled), fused.

    ``bias[z, i, kh * W + kw] = rel_h[z, i, kh] + rel_w[z, i, kw]`` (``K = H * W``), or none when
    ``rel_h``/``rel_w`` are None (then ``Q`` and ``K`` are free, e.g. Hiera's pooled queries).
    The same function as :func:`sam_jax.ops.attention._attend` up to fp32 rounding; the result
    has ``q``'s dtype. ``block_q``/``block_k`` (powers of two >= 16) default to
    :func:`default_blocks`; ``num_warps``/``num_stages`` are Triton's. ``interpret`` runs the
    kernel through the Pallas interpreter (any backend; required on CPU). No gradient.
    """
    _check(q, k, v, rel_h, rel_w)
    (z, queries, d), keys = q.shape, k.shape[1]
    auto_q, auto_k = default_blocks(queries, keys, d)
    block_q, block_k = block_q or auto_q, block_k or auto_k
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {b}")
    dp = max(_pow2(d), 16)
    qp = _round_up(queries, block_q)
    pad_q = lambda x: jnp.pad(x, ((0, 0), (0, qp - queries), (0, 0)))
    q = jnp.pad(q, ((0, 0), (0, qp - queries), (0, dp - d)))
    if rel_h is None:
        row_pad, kp = None, _round_up(keys, block_k)
        k, v = (jnp.pad(x, ((0, 0), (0, kp - keys), (0, dp - d))) for x in (k, v))
        bias, bias_specs = (), []
    else:
        h, w = rel_h.shape[2], rel_w.shape[2]
        row_pad = _pow2(w)
        hp = _round_up(h, max(block_k // row_pad, 1))
        kp = hp * row_pad
        k, v = (
            jnp.pad(x.reshape(z, h, w, d), ((0, 0), (0, hp - h), (0, row_pad - w), (0, dp - d))).reshape(z, kp, dp)
            for x in (k, v)
        )
        # Padded key rows / columns get _MASKED; padded query rows are dropped (any value).
        rel_h = jnp.pad(rel_h.astype(jnp.float32), ((0, 0), (0, 0), (0, hp - h)), constant_values=_MASKED)
        rel_w = jnp.pad(rel_w.astype(jnp.float32), ((0, 0), (0, 0), (0, row_pad - w)), constant_values=_MASKED)
        bias = (pad_q(rel_h), pad_q(rel_w))
        bias_specs = [
            pl.BlockSpec((None, block_q, hp), lambda zi, qi: (zi, qi, 0)),
            pl.BlockSpec((None, block_q, row_pad), lambda zi, qi: (zi, qi, 0)),
        ]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else lax.Precision.DEFAULT
    kernel = functools.partial(
        _kernel, block_k=block_k, num_tiles=kp // block_k, keys=keys, row_pad=row_pad, precision=precision
    )
    out = pl.pallas_call(
        kernel,
        grid=(z, qp // block_q),
        in_specs=[
            pl.BlockSpec((None, block_q, dp), lambda zi, qi: (zi, qi, 0)),
            pl.BlockSpec((None, kp, dp), lambda zi, qi: (zi, 0, 0)),
            pl.BlockSpec((None, kp, dp), lambda zi, qi: (zi, 0, 0)),
            *bias_specs,
        ],
        out_specs=pl.BlockSpec((None, block_q, dp), lambda zi, qi: (zi, qi, 0)),
        out_shape=jax.ShapeDtypeStruct((z, qp, dp), q.dtype),
        # ptxas (sm_90) spills registers with 4 warps on a 128-row tile or head dims over 64.
        compiler_params=plgpu.CompilerParams(
            num_warps=num_warps or (8 if block_q >= 128 or dp > 64 else 4), num_stages=num_stages
        ),
        interpret=interpret,
        name="sam_flash_attention",
    )(q, k, v, *bias)
    return out[:, :queries, :d]
