"""Two-way transformer of the mask decoder and its attention (reference ``transformer.py``).

Tokens attend to the image and the image attends back to the tokens. Sparse prompt tokens may be
padding (``token_valid`` False): they are excluded as attention *keys*, so a padded batch gives
the same result as the reference run on the unpadded prompts.

The image side may have batch 1 while the tokens have batch ``P`` (``P`` prompts on one image
with no mask prompt: the first layer's image keys are the same for every prompt), and the cross
attentions pick the cheaper of two exactly equivalent evaluation orders
(:mod:`sam_jax.ops.cross_attention`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.models.layers import MLPBlock, layer_norm, masked_softmax
from sam_jax.models.sam.config import MaskDecoderConfig
from sam_jax.ops import cross_attention as cross

# The decoder transformer's LayerNorms are torch.nn.LayerNorm with its default eps.
_EPS = 1e-5


class Attention(nnx.Module):
    """Multi-head attention with optional down-projection of the inner width (reference
    ``Attention``). The cross attentions between a few tokens and the large image are evaluated
    through :mod:`sam_jax.ops.cross_attention`, which computes the same function in a cheaper order.
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

    def heads(self, x: jax.Array) -> jax.Array:
        """Split the last axis into ``(heads, head_dim)``."""
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def __call__(
        self,
        q: Float[Array, "B Nq C"],
        k: Float[Array, "#B Nk C"],
        v: Float[Array, "#B Nk C"],
        key_valid: Bool[Array, "B Nk"] | None = None,
    ) -> Float[Array, "B Nq C"]:
        q, k, v = self.heads(self.q_proj(q)), self.heads(self.k_proj(k)), self.heads(self.v_proj(v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = jnp.einsum("bhqk,bkhd->bqhd", masked_softmax(logits, mask), v)
        return self.out_proj(out.reshape(*out.shape[:2], -1))


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
        queries = self.norm2(queries + cross.tokens_to_image(self.cross_attn_token_to_image, q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + cross.image_to_tokens(self.cross_attn_image_to_token, k, q, queries, token_valid))
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
        queries = self.norm_final_attn(queries + cross.tokens_to_image(self.final_attn_token_to_image, q, k, keys))
        return queries, jnp.broadcast_to(keys, (tokens.shape[0], *keys.shape[1:]))
