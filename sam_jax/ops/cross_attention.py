"""The mask decoder's cross attentions between a few tokens and the large image, in the cheaper of
two exactly equivalent evaluation orders.

:class:`~sam_jax.models.sam.transformer.Attention`'s ``__call__`` is the reference's computation.
:func:`tokens_to_image` and :func:`image_to_tokens` compute the same function when one side is
the image (``N = h*w`` positions) and the other a few tokens (``T``). Projecting all ``N``
positions costs ``N * C * inner`` per projection; when ``heads * T < inner`` it is cheaper to move
each image-side projection onto the tokens instead, using only linearity:

- logits ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k`` (per head),
- values ``sum_n a_n (W_v x_n + b_v) = W_v (sum_n a_n x_n) + b_v`` (the ``a_n`` sum to 1),
- output ``W_o concat_h(sum_t a_t v_t) = sum_h sum_t a_t (W_o,h v_t)``,

which cost ``N * C * heads * T`` each. Only the rounding of the fp32 sums changes. An image side
shared by every prompt (batch 1) is projected once instead. The choice is a count of
multiply-adds, the same on every platform.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.models.layers import masked_softmax

if TYPE_CHECKING:
    from sam_jax.models.sam.transformer import Attention


def _weights(attn: Attention, proj: nnx.Linear) -> tuple[jax.Array, jax.Array]:
    """``proj``'s kernel as ``(C, heads, d)`` and bias as ``(heads, d)``."""
    return attn.heads(proj.kernel[...]), attn.heads(proj.bias[...])


def _scale(attn: Attention) -> float:
    return math.sqrt(attn.q_proj.out_features // attn.num_heads)


def factored_is_cheaper(attn: Attention, n_image: int, n_tokens: int, image_batch: int, batch: int) -> bool:
    """Whether moving the image-side projections onto the tokens costs fewer multiply-adds
    (counted per pair of image-side projections, with the token-side products they need)."""
    c, inner, h = attn.q_proj.in_features, attn.q_proj.out_features, attn.num_heads
    direct = image_batch * n_image * c * inner + batch * n_image * n_tokens * inner
    return batch * n_image * c * h * n_tokens < direct


def tokens_to_image(
    attn: Attention,
    q: Float[Array, "B T C"],
    k: Float[Array, "Bi N C"],
    v: Float[Array, "Bi N C"],
    *,
    factored: bool | None = None,
) -> Float[Array, "B T C"]:
    """``attn(q, k, v)`` with token queries and image keys/values (``Bi`` is ``B`` or 1).
    ``factored`` forces an evaluation order (default: the cheaper one)."""
    (b, t, _), (bi, n, _) = q.shape, k.shape
    if factored is None:
        factored = factored_is_cheaper(attn, n, t, bi, b)
    if not factored:
        return attn(q, k, v)
    qh = attn.heads(attn.q_proj(q))  # (B, T, H, d)
    wk, bk = _weights(attn, attn.k_proj)
    wv, bv = _weights(attn, attn.v_proj)
    qk = jnp.einsum("bthd,chd->bhtc", qh, wk)
    # Image positions as the leading (row) axis: the image operands are never transposed.
    logits = jnp.einsum("bnc,bhtc->bnht", k, qk) + jnp.einsum("bthd,hd->bht", qh, bk)[:, None]
    weights = jax.nn.softmax(logits / _scale(attn), axis=1)
    pooled = jnp.einsum("bnht,bnc->bhtc", weights, v)
    out = jnp.einsum("bhtc,chd->bthd", pooled, wv) + bv
    return attn.out_proj(out.reshape(b, t, -1))


def image_to_tokens(
    attn: Attention,
    q: Float[Array, "Bi N C"],
    k: Float[Array, "B T C"],
    v: Float[Array, "B T C"],
    key_valid: Bool[Array, "B T"],
    *,
    factored: bool | None = None,
) -> Float[Array, "B N C"]:
    """``attn(q, k, v, key_valid)`` with image queries and token keys/values (``Bi`` is ``B`` or
    1). ``factored`` forces an evaluation order (default: the cheaper one, chosen for the query
    projection and the output projection separately)."""
    (bi, n, c), (b, t, _) = q.shape, k.shape
    h, inner = attn.num_heads, attn.q_proj.out_features
    kh, vh = attn.heads(attn.k_proj(k)), attn.heads(attn.v_proj(v))  # (B, T, H, d)
    # Image positions stay the leading (row) axis throughout: every product is a plain matmul.
    if factored if factored is not None else factored_is_cheaper(attn, n, t, bi, b):
        wq, bq = _weights(attn, attn.q_proj)
        kq = jnp.einsum("bthd,chd->bhtc", kh, wq)
        logits = jnp.einsum("bnc,bhtc->bnht", q, kq) + jnp.einsum("bthd,hd->bht", kh, bq)[:, None]
    else:
        logits = jnp.einsum("bnhd,bthd->bnht", attn.heads(attn.q_proj(q)), kh)
    weights = masked_softmax(logits / _scale(attn), key_valid[:, None, None, :])
    # The output projection: per image position, ``inner * C`` directly, ``heads * T * C`` factored.
    if factored if factored is not None else h * t * c < inner * (c + t):
        wo = attn.out_proj.kernel[...].reshape(h, inner // h, c)
        per_token = jnp.einsum("bthd,hdc->bhtc", vh, wo)
        return jnp.einsum("bnht,bhtc->bnc", weights, per_token) + attn.out_proj.bias[...]
    out = jnp.einsum("bnht,bthd->bnhd", weights, vh)
    return attn.out_proj(out.reshape(*out.shape[:2], inner))
