"""Two-way transformer of the mask decoder and its attention (reference ``transformer.py``).

Tokens attend to the image and the image attends back to the tokens. Sparse prompt tokens may be
padding (``token_valid`` False): they are excluded as attention *keys*, so a padded batch gives
the same result as the reference run on the unpadded prompts.

The image side may have batch 1 while the tokens have batch ``P`` (``P`` prompts on one image
with no mask prompt: the first layer's image keys are the same for every prompt), and the cross
attentions pick the cheaper of two exactly equivalent evaluation orders (see :class:`Attention`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.config import MaskDecoderConfig
from sam_jax.modeling.common import MLPBlock, layer_norm, masked_softmax

# The decoder transformer's LayerNorms are torch.nn.LayerNorm with its default eps.
_EPS = 1e-5


class Attention(nnx.Module):
    """Multi-head attention with optional down-projection of the inner width.

    :meth:`__call__` is the reference's computation. :meth:`tokens_to_image` and
    :meth:`image_to_tokens` compute the same function when one side is the large image
    (``N = h*w`` positions) and the other a few tokens (``T``). Projecting all ``N`` positions
    costs ``N * C * inner`` per projection; when ``heads * T < inner`` it is cheaper to move each
    image-side projection onto the tokens instead, using only linearity:

    - logits ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k`` (per head),
    - values ``sum_n a_n (W_v x_n + b_v) = W_v (sum_n a_n x_n) + b_v`` (the ``a_n`` sum to 1),
    - output ``W_o concat_h(sum_t a_t v_t) = sum_h sum_t a_t (W_o,h v_t)``,

    which cost ``N * C * heads * T`` each. Only the rounding of the fp32 sums changes. An image
    side shared by every prompt (batch 1) is projected once instead.
    """

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1, *, rngs: nnx.Rngs) -> None:
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the inner width ({inner})")
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(dim, inner, rngs=rngs)
        self.k_proj = nnx.Linear(dim, inner, rngs=rngs)
        self.v_proj = nnx.Linear(dim, inner, rngs=rngs)
        self.out_proj = nnx.Linear(inner, dim, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def _weights(self, proj: nnx.Linear) -> tuple[jax.Array, jax.Array]:
        """``proj``'s kernel as ``(C, heads, d)`` and bias as ``(heads, d)``."""
        return self._heads(proj.kernel[...]), self._heads(proj.bias[...])

    def _scale(self) -> float:
        return math.sqrt(self.q_proj.out_features // self.num_heads)

    def _factored(self, n_image: int, n_tokens: int, image_batch: int, batch: int) -> bool:
        """Whether moving the image-side projections onto the tokens costs fewer multiply-adds
        (counted per pair of image-side projections, with the token-side products they need)."""
        c, inner, h = self.q_proj.in_features, self.q_proj.out_features, self.num_heads
        direct = image_batch * n_image * c * inner + batch * n_image * n_tokens * inner
        return batch * n_image * c * h * n_tokens < direct

    def __call__(
        self,
        q: Float[Array, "B Nq C"],
        k: Float[Array, "B Nk C"],
        v: Float[Array, "B Nk C"],
        key_valid: Bool[Array, "B Nk"] | None = None,
    ) -> Float[Array, "B Nq C"]:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = jnp.einsum("bhqk,bkhd->bqhd", masked_softmax(logits, mask), v)
        return self.out_proj(out.reshape(*out.shape[:2], -1))

    def tokens_to_image(
        self,
        q: Float[Array, "B T C"],
        k: Float[Array, "Bi N C"],
        v: Float[Array, "Bi N C"],
        *,
        factored: bool | None = None,
    ) -> Float[Array, "B T C"]:
        """``self(q, k, v)`` with token queries and image keys/values (``Bi`` is ``B`` or 1).
        ``factored`` forces an evaluation order (default: the cheaper one)."""
        (b, t, _), (bi, n, _) = q.shape, k.shape
        if factored is None:
            factored = self._factored(n, t, bi, b)
        if not factored:
            return self(q, k, v)
        qh = self._heads(self.q_proj(q))  # (B, T, H, d)
        wk, bk = self._weights(self.k_proj)
        wv, bv = self._weights(self.v_proj)
        qk = jnp.einsum("bthd,chd->bhtc", qh, wk)
        # Image positions as the leading (row) axis: the image operands are never transposed.
        logits = jnp.einsum("bnc,bhtc->bnht", k, qk) + jnp.einsum("bthd,hd->bht", qh, bk)[:, None]
        attn = jax.nn.softmax(logits / self._scale(), axis=1)
        pooled = jnp.einsum("bnht,bnc->bhtc", attn, v)
        out = jnp.einsum("bhtc,chd->bthd", pooled, wv) + bv
        return self.out_proj(out.reshape(b, t, -1))

    def image_to_tokens(
        self,
        q: Float[Array, "Bi N C"],
        k: Float[Array, "B T C"],
        v: Float[Array, "B T C"],
        key_valid: Bool[Array, "B T"],
        *,
        factored: bool | None = None,
    ) -> Float[Array, "B N C"]:
        """``self(q, k, v, key_valid)`` with image queries and token keys/values (``Bi`` is ``B``
        or 1). ``factored`` forces an evaluation order (default: the cheaper one, chosen for the
        query projection and the output projection separately)."""
        (bi, n, c), (b, t, _) = q.shape, k.shape
        h, inner = self.num_heads, self.q_proj.out_features
        kh, vh = self._heads(self.k_proj(k)), self._heads(self.v_proj(v))  # (B, T, H, d)
        # Image positions stay the leading (row) axis throughout: every product is a plain matmul.
        if factored if factored is not None else self._factored(n, t, bi, b):
            wq, bq = self._weights(self.q_proj)
            kq = jnp.einsum("bthd,chd->bhtc", kh, wq)
            logits = jnp.einsum("bnc,bhtc->bnht", q, kq) + jnp.einsum("bthd,hd->bht", kh, bq)[:, None]
        else:
            logits = jnp.einsum("bnhd,bthd->bnht", self._heads(self.q_proj(q)), kh)
        attn = masked_softmax(logits / self._scale(), key_valid[:, None, None, :])
        # The output projection: per image position, ``inner * C`` directly, ``heads * T * C`` factored.
        if factored if factored is not None else h * t * c < inner * (c + t):
            wo = self.out_proj.kernel[...].reshape(h, inner // h, c)
            per_token = jnp.einsum("bthd,hdc->bhtc", vh, wo)
            return jnp.einsum("bnht,bhtc->bnc", attn, per_token) + self.out_proj.bias[...]
        out = jnp.einsum("bnht,bthd->bnhd", attn, vh)
        return self.out_proj(out.reshape(*out.shape[:2], inner))


class TwoWayAttentionBlock(nnx.Module):
    """Self-attention of tokens, token->image, MLP, image->token (reference order and norms)."""

    def __init__(self, cfg: MaskDecoderConfig, *, skip_first_layer_pe: bool, rngs: nnx.Rngs) -> None:
        d, h, r = cfg.transformer_dim, cfg.transformer_num_heads, cfg.attention_downsample_rate
        self.self_attn = Attention(d, h, rngs=rngs)
        self.norm1 = layer_norm(d, _EPS, rngs=rngs)
        self.cross_attn_token_to_image = Attention(d, h, r, rngs=rngs)
        self.norm2 = layer_norm(d, _EPS, rngs=rngs)
        self.mlp = MLPBlock(d, cfg.transformer_mlp_dim, jax.nn.relu, rngs=rngs)
        self.norm3 = layer_norm(d, _EPS, rngs=rngs)
        self.norm4 = layer_norm(d, _EPS, rngs=rngs)
        self.cross_attn_image_to_token = Attention(d, h, r, rngs=rngs)
        self.skip_first_layer_pe = skip_first_layer_pe

    def __call__(
        self,
        queries: Float[Array, "B T C"],
        keys: Float[Array, "Bi HW C"],
        query_pe: Float[Array, "B T C"],
        key_pe: Float[Array, "1 HW C"],
        token_valid: Bool[Array, "B T"],
    ) -> tuple[Float[Array, "B T C"], Float[Array, "B HW C"]]:
        """``keys`` may have batch 1 (shared by every prompt); the returned keys have batch ``B``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_valid)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_valid)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token.image_to_tokens(k, q, queries, token_valid))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    """``depth`` two-way blocks and a final token->image attention."""

    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs) -> None:
        d = cfg.transformer_dim
        self.layers = nnx.List(
            [TwoWayAttentionBlock(cfg, skip_first_layer_pe=i == 0, rngs=rngs) for i in range(cfg.transformer_depth)]
        )
        self.final_attn_token_to_image = Attention(
            d, cfg.transformer_num_heads, cfg.attention_downsample_rate, rngs=rngs
        )
        self.norm_final_attn = layer_norm(d, _EPS, rngs=rngs)

    def __call__(
        self,
        image_embedding: Float[Array, "Bi h w C"],
        image_pe: Float[Array, "1 h w C"],
        tokens: Float[Array, "B T C"],
        token_valid: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T C"], Float[Array, "B HW C"]]:
        """Returns the processed tokens and the processed image as ``(B, h*w, C)``.

        ``image_embedding`` may have batch 1 when every prompt sees the same image (and dense
        prompt): it is then processed once where the reference repeats it per prompt.
        """
        bi, h, w, c = image_embedding.shape
        if token_valid is None:
            token_valid = jnp.ones(tokens.shape[:2], bool)
        keys = image_embedding.reshape(bi, h * w, c)
        key_pe = image_pe.reshape(-1, h * w, c)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe, token_valid)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.tokens_to_image(q, k, keys))
        return queries, jnp.broadcast_to(keys, (tokens.shape[0], *keys.shape[1:]))
