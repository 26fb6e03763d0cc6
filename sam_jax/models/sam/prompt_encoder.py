"""Prompt encoder: random-Fourier positional encoding, point / box tokens, dense mask embedding
(reference ``prompt_encoder.py``).

Shapes are static: a batch of ``P`` prompts carries ``N`` point slots (some marked invalid) and
one box slot (possibly invalid). Invalid slots still produce tokens; the decoder masks them out of
attention, so they never change the result. Coordinates are in the model-input frame (pixels of
the resized 1024 image), as in the reference.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from sam_jax.models.layers import Buffer, gelu, layer_norm, sequential
from sam_jax.models.sam.config import PromptEncoderConfig


class PositionEmbeddingRandom(nnx.Module):
    """Positional encoding with random spatial frequencies (a fixed Gaussian matrix)."""

    def __init__(self, num_pos_feats: int, *, rngs: nnx.Rngs) -> None:
        self.positional_encoding_gaussian_matrix = Buffer(jax.random.normal(rngs.params(), (2, num_pos_feats)))

    def encode(self, coords: Float[Array, "... 2"]) -> Float[Array, "... C"]:
        """Encode points already normalised to [0, 1] (x, y)."""
        coords = 2 * coords - 1
        coords = jnp.matmul(coords, self.positional_encoding_gaussian_matrix[...], precision=jax.lax.Precision.HIGHEST)
        coords = 2 * math.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def dense(self, h: int, w: int) -> Float[Array, "h w C"]:
        """Encoding of every cell centre of an ``h x w`` grid."""
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self.encode(grid)

    def with_coords(self, coords: Float[Array, "... 2"], image_size: tuple[int, int]) -> Float[Array, "... C"]:
        """Encode pixel coordinates (x, y) of an image of ``image_size`` (H, W)."""
        scale = jnp.array([image_size[1], image_size[0]], jnp.float32)
        return self.encode(coords / scale)


class PromptEncoder(nnx.Module):
    """Embeds points, boxes and dense masks into sparse tokens and a dense map."""

    def __init__(self, cfg: PromptEncoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        d, c = cfg.embed_dim, cfg.mask_in_chans
        self.pe_layer = PositionEmbeddingRandom(d // 2, rngs=rngs)
        # 0 / 1: background / foreground point; 2 / 3: box top-left / bottom-right corner.
        self.point_embeddings = nnx.List([nnx.Embed(1, d, rngs=rngs) for _ in range(4)])
        self.not_a_point_embed = nnx.Embed(1, d, rngs=rngs)
        self.mask_downscaling = nnx.List(
            [
                nnx.Conv(1, c // 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                layer_norm(c // 4, 1e-6, rngs=rngs),
                gelu,
                nnx.Conv(c // 4, c, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                layer_norm(c, 1e-6, rngs=rngs),
                gelu,
                nnx.Conv(c, d, (1, 1), rngs=rngs),
            ]
        )
        self.no_mask_embed = nnx.Embed(1, d, rngs=rngs)

    @property
    def _input_hw(self) -> tuple[int, int]:
        return (self.cfg.input_image_size, self.cfg.input_image_size)

    def get_dense_pe(self) -> Float[Array, "h w C"]:
        """Positional encoding of the image-embedding grid."""
        g = self.cfg.image_embedding_size
        return self.pe_layer.dense(g, g)

    def embed_points(self, coords: Float[Array, "P N 2"], labels: Int[Array, "P N"]) -> Float[Array, "P N C"]:
        """Point tokens. Label -1 is the reference's "not a point" (its padding point); 0 / 1 are
        background / foreground points; 2 / 3 are box corners given as points (SAM 2's predictors
        pass boxes so; SAM 1's prompt encoder has no such labels, and its prompts never carry them)."""
        pe = self.pe_layer.with_coords(coords + 0.5, self._input_hw)  # +0.5: pixel centre
        table = jnp.stack([e.embedding[0] for e in self.point_embeddings])  # (4, C)
        not_a_point = self.not_a_point_embed.embedding[0]
        labels = labels[..., None]
        known = (labels >= 0) & (labels < len(self.point_embeddings))
        return jnp.where(labels == -1, not_a_point, pe + jnp.where(known, table[jnp.clip(labels[..., 0], 0, 3)], 0.0))

    def embed_boxes(self, boxes: Float[Array, "P 4"]) -> Float[Array, "P 2 C"]:
        """Two corner tokens per xyxy box."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.with_coords(corners, self._input_hw)
        corner_embed = jnp.stack([self.point_embeddings[2].embedding[0], self.point_embeddings[3].embedding[0]])
        return pe + corner_embed

    def embed_masks(self, masks: Float[Array, "P M M"]) -> Float[Array, "P h w C"]:
        """Downscale low-res mask logits (256 x 256 for SAM) to the embedding grid."""
        return sequential(self.mask_downscaling, masks[..., None])

    def __call__(
        self,
        coords: Float[Array, "P N 2"],
        labels: Int[Array, "P N"],
        point_valid: Bool[Array, "P N"],
        boxes: Float[Array, "P 4"] | None,
        box_valid: Bool[Array, " P"] | None,
        masks: Float[Array, "P M M"] | None,
        mask_valid: Bool[Array, " P"] | None,
    ) -> tuple[Float[Array, "P T C"], Bool[Array, "P T"], Float[Array, "P h w C"] | Float[Array, "1 h w C"]]:
        """Returns sparse tokens ``(P, N + 2, C)`` (points then box corners), their validity, and
        the dense embedding ``(P, h, w, C)`` (the no-mask embedding where ``mask_valid`` is False).

        ``boxes``/``box_valid`` None means no prompt has a box: no corner tokens (``T = N``).
        ``masks``/``mask_valid`` None means no prompt has a mask: the dense embedding is the
        no-mask embedding once, ``(1, h, w, C)``, as the reference's broadcast ``expand``.
        """
        sparse, valid = self.embed_points(coords, labels), point_valid
        if boxes is not None:
            sparse = jnp.concatenate([sparse, self.embed_boxes(boxes)], axis=1)
            valid = jnp.concatenate([valid, jnp.repeat(box_valid[:, None], 2, axis=1)], axis=1)
        g = self.cfg.image_embedding_size
        no_mask = jnp.broadcast_to(self.no_mask_embed.embedding[0], (1, g, g, self.cfg.embed_dim))
        if masks is None:
            return sparse, valid, no_mask
        dense = jnp.where(mask_valid[:, None, None, None], self.embed_masks(masks), no_mask)
        return sparse, valid, dense
