"""Attention and token-wise layers under an :class:`~sam_jax.ops.policy.ExecutionPolicy`.

The encoder's attention is ``softmax(q k^T + bias) v`` with SAM's decomposed relative-position
bias ``rel_h[q, kh] + rel_w[q, kw]``. Under a blocked policy (CPUs) it runs one head and a block
of query rows at a time, so the scores stay in cache (each row still takes its softmax over every
key: the result is the unblocked one); windows run one at a time; token-wise layers run a slice
of tokens at a time. Otherwise every op runs whole. ``policy.attention_kernel`` picks what computes
the attention itself: XLA (above), the fused Pallas kernel that adds the bias per tile
(:mod:`sam_jax.ops.flash_attention`), or cuDNN's fused attention where it applies.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sam_jax.ops.flash_attention import flash_attention
from sam_jax.ops.policy import ExecutionPolicy


def _map(fn: Callable[..., jax.Array], xs: tuple[jax.Array, ...]) -> jax.Array:
    """``fn`` over the leading axis of ``xs``, one slice at a time (``lax.map``'s result).

    Not ``lax.map`` itself: its output buffer is filled from a constant, which XLA schedules at
    the start of the program, so every loop's output would be live at once (950 MB instead of
    170 MB for vit_b). A fill that reads the input (``x * 0``: XLA keeps float products) is made
    only when the input is.
    """
    step = jax.eval_shape(fn, *(x[0] for x in xs))
    out = jnp.broadcast_to((xs[0].ravel()[0] * 0).astype(step.dtype), (xs[0].shape[0], *step.shape))
    return jax.lax.fori_loop(0, xs[0].shape[0], lambda i, out: out.at[i].set(fn(*(x[i] for x in xs))), out)


def map_blocks(fn: Callable[..., jax.Array], xs: tuple[jax.Array, ...], block: int) -> jax.Array:
    """``fn(*xs)`` computed ``block`` rows (axis 0) at a time; rows are padded to a multiple of
    ``block`` and the padding dropped from the result."""
    rows = xs[0].shape[0]
    if block >= rows:
        return fn(*xs)
    steps = -(-rows // block)
    pad = [(0, steps * block - rows)]
    xs = tuple(jnp.pad(x, pad + [(0, 0)] * (x.ndim - 1)).reshape(steps, block, *x.shape[1:]) for x in xs)
    out = _map(fn, xs)
    return out.reshape(steps * block, *out.shape[2:])[:rows]


def tokenwise(
    fn: Callable[[jax.Array], jax.Array], x: Float[Array, "... C"], policy: ExecutionPolicy
) -> Float[Array, "... D"]:
    """``fn``, a per-token layer stack, applied to ``x`` (``policy.token_block`` tokens at a time
    when blocked; the result is the same)."""
    if not policy.blocked:
        return fn(x)
    out = map_blocks(fn, (x.reshape(-1, x.shape[-1]),), policy.token_block)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def per_window(
    fn: Callable[[jax.Array], jax.Array],
    windows: Float[Array, "N w w C"],
    policy: ExecutionPolicy,
    per_step: int = 1,
) -> Float[Array, "N _w _w D"]:
    """``fn`` over a batch of windows: ``per_step`` windows at a time when blocked (default one),
    all at once otherwise."""
    return map_blocks(fn, (windows,), per_step if policy.blocked else windows.shape[0])


def _attend(
    q: Float[Array, "... Q d"],
    k: Float[Array, "... K d"],
    v: Float[Array, "... K d"],
    rel_h: Float[Array, "... Q H"] | None,
    rel_w: Float[Array, "... Q W"] | None,
) -> Float[Array, "... Q d"]:
    """``softmax(q k^T + bias) v`` with the decomposed bias ``rel_h[q, kh] + rel_w[q, kw]``
    (``K = H * W``, key index ``kh * W + kw``) added before the softmax (reference order).

    The softmax's division by its row sums is applied to the ``(Q, d)`` output instead of the
    ``(Q, K)`` weights: one pass less over the scores (10% of a vit_b global attention on CPU),
    the same sums up to fp32 rounding."""
    attn = jnp.einsum("...qd,...kd->...qk", q, k)
    if rel_h is not None:
        attn = attn.reshape(*rel_h.shape, -1) + rel_h[..., None] + rel_w[..., None, :]
        attn = attn.reshape(*q.shape[:-1], -1)
    weights = jnp.exp(attn - jax.lax.stop_gradient(attn.max(axis=-1, keepdims=True)))
    return jnp.einsum("...qk,...kd->...qd", weights, v) / weights.sum(axis=-1, keepdims=True)


def cudnn_applies(q: Float[Array, "Z Q d"], k: Float[Array, "Z K d"]) -> bool:
    """Whether cuDNN's fused attention takes these operands (given no bias): bf16/fp16 (cuDNN has
    no fp32 flash attention) with a head dim that is a multiple of 8, at most 128 (Hopper takes
    256, but the limit is checked against the device at trace time; 128 holds everywhere)."""
    d = q.shape[-1]
    return q.dtype in (jnp.bfloat16, jnp.float16) and k.dtype == q.dtype and d % 8 == 0 and d <= 128


def attention(
    q: Float[Array, "Z Q d"],
    k: Float[Array, "Z K d"],
    v: Float[Array, "Z K d"],
    rel_h: Float[Array, "Z Q H"] | None,
    rel_w: Float[Array, "Z Q W"] | None,
    policy: ExecutionPolicy,
) -> Float[Array, "Z Q d"]:
    """Attention of ``Z`` independent heads (``q`` already scaled; ``Q`` queries over ``K`` keys)
    with an optional decomposed bias (see :func:`_attend`), computed by
    ``policy.attention_kernel``. XLA blocked, when one head's scores exceed
    ``policy.score_block``: a head and a block of query rows at a time."""
    kernel = policy.attention_kernel
    if kernel == "cudnn" and rel_h is None and cudnn_applies(q, k):
        # (Z, T, d) as cuDNN's (B, T, N=1, H); the scale is already in q.
        out = jax.nn.dot_product_attention(
            q[:, :, None], k[:, :, None], v[:, :, None], scale=1.0, implementation="cudnn"
        )
        return out[:, :, 0]
    if kernel != "xla":
        return flash_attention(q, k, v, rel_h, rel_w, interpret=policy.interpret)
    queries, keys = q.shape[1], k.shape[1]
    if not policy.blocked or queries * keys <= policy.score_block:
        return _attend(q, k, v, rel_h, rel_w)
    rows = max(policy.score_block // keys, 1)
    if rel_h is None:
        return _map(lambda q, k, v: map_blocks(lambda qb: _attend(qb, k, v, None, None), (q,), rows), (q, k, v))

    def one_head(q, k, v, rel_h, rel_w):
        return map_blocks(lambda *a: _attend(a[0], k, v, *a[1:]), (q, rel_h, rel_w), rows)

    return _map(one_head, (q, k, v, rel_h, rel_w))


def _online_softmax_step(
    carry: tuple[jax.Array, jax.Array, jax.Array],
    q: Float[Array, "Q d"],
    k: Float[Array, "C d"],
    v: Float[Array, "C d"],
    valid: Bool[Array, " C"],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One chunk of keys into a running softmax ``(max, sum, weighted values)`` per query row (the
    chunk has at least one valid key, so the new maximum is finite)."""
    m, total, acc = carry
    s = jnp.where(valid, q @ k.T, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=-1))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    return m_new, total * rescale + p.sum(axis=-1), acc * rescale[:, None] + p @ v


def masked_attention(
    q: Float[Array, "Z Q d"],
    k: Float[Array, "Z K d"],
    v: Float[Array, "Z K d"],
    key_valid: Bool[Array, "Z K"],
    policy: ExecutionPolicy,
    chunk: int,
) -> Float[Array, "Z Q d"]:
    """Attention of ``Z`` heads (``q`` already scaled) where only the keys ``key_valid`` marks take
    part (exactly zero weight for the others; every row needs one valid key): SAM 2's cross-attention
    to a fixed-size memory bank with empty slots.

    Unblocked: one masked softmax over all keys. Blocked (CPUs): a block of query rows at a time
    (``4 * policy.score_block // chunk``), its keys in chunks of ``chunk`` (a memory frame's tokens; the
    last, shorter chunk the object pointers) under a running (online) softmax, and a chunk without
    a valid key skipped (``lax.cond``: not computed), so a bank's empty slots cost no work and the
    program stays one for every fill. The result is the one softmax's up to fp32 rounding.
    """
    if not policy.blocked:
        logits = jnp.einsum("zqd,zkd->zqk", q, k)
        weights = jax.nn.softmax(jnp.where(key_valid[:, None, :], logits, -jnp.inf), axis=-1)
        return jnp.einsum("zqk,zkd->zqd", weights, v)
    keys, d = k.shape[1], k.shape[2]
    full = keys // chunk * chunk

    def one_head(q, k, v, valid):
        kc, vc = k[:full].reshape(-1, chunk, d), v[:full].reshape(-1, chunk, d)
        vmask = valid[:full].reshape(-1, chunk)
        taken = vmask.any(axis=-1)

        def rows(qb):
            def body(i, carry):
                step = lambda c: _online_softmax_step(c, qb, kc[i], vc[i], vmask[i])
                return jax.lax.cond(taken[i], step, lambda c: c, carry)

            r = qb.shape[0]
            carry = (jnp.full((r,), -jnp.inf, qb.dtype), jnp.zeros((r,), qb.dtype), jnp.zeros((r, d), qb.dtype))
            carry = jax.lax.fori_loop(0, kc.shape[0], body, carry)
            if full < keys:  # the tail (object pointers)
                step = lambda c: _online_softmax_step(c, qb, k[full:], v[full:], valid[full:])
                carry = jax.lax.cond(valid[full:].any(), step, lambda c: c, carry)
            _, total, acc = carry
            return acc / total[:, None]

        # Query blocks of 4 x the score block: each step slices (copies) a chunk of keys and values,
        # which larger blocks amortise. hiera_t's memory (4096 queries, 4 frames of 4096 keys, d 256,
        # 2 threads): 0.43 s against 0.63 s at 1 x (160 GFLOP/s, 87% of XLA's fp32 matmul rate here);
        # torch's fused CPU attention 0.34 s.
        return map_blocks(rows, (q,), max(4 * policy.score_block // chunk, 1))

    return _map(one_head, (q, k, v, key_valid))
