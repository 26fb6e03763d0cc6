"""Memory attention of SAM 2 (reference ``sam2/modeling/memory_attention.py`` and ``RoPEAttention``
in ``sam2/modeling/sam/transformer.py``).

The current frame's stride-16 tokens (``B, H*W, C``, row-major) attend to themselves, then to the
memory: the spatial memories of earlier frames (``r`` frames of the same ``H x W`` grid, ``mem_dim``
wide, frame-major) followed by object-pointer tokens. Both attentions carry a 2-D axial rotary
encoding (:mod:`sam_jax.models.sam2.rope`) of each token's grid position; memory keys repeat the
query grid's rotations once per frame, and the trailing ``num_obj_ptr_tokens`` keys are not rotated.

Layers are pre-norm (LayerNorm eps 1e-5, PyTorch's default) with residuals; the reference's dropout
is training-only. Everything is batch-first (the reference's ``batch_first=True`` transposes its
sequence-first inputs to the same thing).

Beyond the reference: ``memory_valid`` marks memory tokens that take part (a fixed-size memory
bank with empty slots); masked keys get exactly zero weight, so a bank with empty slots gives the
same result as the reference given only the filled ones (the rotations are per frame, so an
empty frame does not shift the others').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.models.layers import gelu, layer_norm
from sam_jax.models.sam2.config import MemoryAttentionConfig, RoPEAttentionConfig
from sam_jax.models.sam2.rope import grid_rotations, repeat_rotations, rotate
from sam_jax.ops import attention as ops
from sam_jax.ops.policy import XLA, ExecutionPolicy

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": gelu}  # get_activation_fn; F.gelu is the exact (erf) form


class RoPEAttention(nnx.Module):
    """Multi-head attention with axial rotary encoding of queries and keys (``RoPEAttention``)."""

    def __init__(self, cfg: RoPEAttentionConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        inner = cfg.internal_dim
        self.q_proj = nnx.Linear(cfg.embedding_dim, inner, rngs=rngs)
        self.k_proj = nnx.Linear(cfg.kv_dim, inner, rngs=rngs)
        self.v_proj = nnx.Linear(cfg.kv_dim, inner, rngs=rngs)
        self.out_proj = nnx.Linear(inner, cfg.embedding_dim, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        h = self.cfg.num_heads
        return x.reshape(b, n, h, c // h).transpose(0, 2, 1, 3)

    def __call__(
        self,
        q: Float[Array, "B Nq C"],
        k: Float[Array, "B Nk Ck"],
        v: Float[Array, "B Nk Ck"],
        num_k_exclude_rope: int = 0,
        key_valid: Bool[Array, "B Nk"] | None = None,
        policy: ExecutionPolicy = XLA,
    ) -> Float[Array, "B Nq C"]:
        """Queries of a (square, or ``feat_sizes``) grid over keys whose first ``Nk -
        num_k_exclude_rope`` are that grid repeated (``rope_k_repeat``) or the grid itself."""
        cfg = self.cfg
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        b, h, nq, d = q.shape
        nk = k.shape[2]
        if nq != nk and not cfg.rope_k_repeat:
            raise ValueError(f"{nq} queries over {nk} keys need rope_k_repeat (cross-attention to memory)")
        num_rope = nk - num_k_exclude_rope
        if not 0 <= num_rope <= nk:
            raise ValueError(f"num_k_exclude_rope must be in [0, {nk}], got {num_k_exclude_rope}")
        cos, sin = grid_rotations(nq, d, cfg.feat_sizes, cfg.rope_theta)
        q = rotate(q, cos, sin)
        if num_rope:
            if cfg.rope_k_repeat:
                cos, sin = repeat_rotations(cos, sin, num_rope)
            elif num_rope != nq:
                raise ValueError(f"without rope_k_repeat the {num_rope} rotated keys must match {nq} queries")
            k = jnp.concatenate([rotate(k[:, :, :num_rope], cos, sin), k[:, :, num_rope:]], axis=2)
        # F.scaled_dot_product_attention: softmax(q k^T / sqrt(head_dim)) v.
        if key_valid is None:
            flat = lambda t: t.reshape(b * h, t.shape[2], d)
            out = ops.attention(flat(q) * d**-0.5, flat(k), flat(v), None, None, policy).reshape(b, h, nq, d)
        else:
            # Keys in chunks of one memory frame (the query grid's tokens), empty slots skipped.
            valid = jnp.broadcast_to(key_valid[:, None], (b, h, nk)).reshape(b * h, nk)
            flat = lambda t: t.reshape(b * h, t.shape[2], d)
            out = ops.masked_attention(flat(q) * d**-0.5, flat(k), flat(v), valid, policy, chunk=nq)
            out = out.reshape(b, h, nq, d)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, nq, h * d))


class MemoryAttentionLayer(nnx.Module):
    """Self-attention, cross-attention to the memory, MLP; each pre-norm with a residual."""

    def __init__(self, cfg: MemoryAttentionConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.self_attn = RoPEAttention(cfg.self_attention, rngs=rngs)
        self.cross_attn_image = RoPEAttention(cfg.cross_attention, rngs=rngs)
        self.linear1 = nnx.Linear(d, cfg.dim_feedforward, rngs=rngs)
        self.linear2 = nnx.Linear(cfg.dim_feedforward, d, rngs=rngs)
        self.norm1 = layer_norm(d, eps, rngs=rngs)
        self.norm2 = layer_norm(d, eps, rngs=rngs)
        self.norm3 = layer_norm(d, eps, rngs=rngs)

    def __call__(
        self,
        tgt: Float[Array, "B N C"],
        memory: Float[Array, "B M Cm"],
        pos: Float[Array, "B M Cm"],
        query_pos: Float[Array, "B N C"],
        num_k_exclude_rope: int = 0,
        memory_valid: Bool[Array, "B M"] | None = None,
        policy: ExecutionPolicy = XLA,
    ) -> Float[Array, "B N C"]:
        cfg = self.cfg
        x = self.norm1(tgt)
        qk = x + query_pos if cfg.pos_enc_at_attn else x
        tgt = tgt + self.self_attn(qk, qk, x, policy=policy)
        x = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(
            x + query_pos if cfg.pos_enc_at_cross_attn_queries else x,
            memory + pos if cfg.pos_enc_at_cross_attn_keys else memory,
            memory,
            num_k_exclude_rope,
            memory_valid,
            policy,
        )
        act = _ACTIVATIONS[cfg.activation]
        return tgt + ops.tokenwise(lambda t: self.linear2(act(self.linear1(self.norm3(t)))), tgt, policy)


class MemoryAttention(nnx.Module):
    """``num_layers`` :class:`MemoryAttentionLayer` and a final LayerNorm (``MemoryAttention``)."""

    def __init__(self, cfg: MemoryAttentionConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.layers = nnx.List([MemoryAttentionLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = layer_norm(cfg.d_model, cfg.layer_norm_eps, rngs=rngs)

    def __call__(
        self,
        curr: Float[Array, "B N C"],
        memory: Float[Array, "B M Cm"],
        curr_pos: Float[Array, "B N C"],
        memory_pos: Float[Array, "B M Cm"],
        num_obj_ptr_tokens: int = 0,
        memory_valid: Bool[Array, "B M"] | None = None,
        policy: ExecutionPolicy = XLA,
    ) -> Float[Array, "B N C"]:
        """The current frame's tokens conditioned on the memory.

        ``curr``: ``H*W`` tokens of the stride-16 features (row-major) and ``curr_pos`` their sine
        encoding; ``memory``: ``r`` spatial memories of the same grid (``r*H*W`` tokens) then
        ``num_obj_ptr_tokens`` object-pointer tokens, ``memory_pos`` their encodings;
        ``memory_valid``: which memory tokens take part (all when None).
        """
        output = curr + 0.1 * curr_pos if self.cfg.pos_enc_at_input else curr
        for layer in self.layers:
            output = layer(output, memory, memory_pos, curr_pos, num_obj_ptr_tokens, memory_valid, policy)
        return self.norm(output)
