"""Mask decoder: output tokens, two-way transformer, upscaling, hypernetwork MLPs and the IoU
head (reference ``mask_decoder.py``)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.models.layers import MLP, gelu, layer_norm
from sam_jax.models.sam.config import MaskDecoderConfig
from sam_jax.models.sam.transformer import TwoWayTransformer
from sam_jax.ops.conv import conv_transpose_2x2


class MaskDecoder(nnx.Module):
    """Predicts ``num_mask_tokens`` masks (token 0: single-mask output; 1..3: multimask) and
    their IoU scores for each prompt."""

    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        d = cfg.transformer_dim
        self.transformer = TwoWayTransformer(cfg, rngs=rngs)
        self.iou_token = nnx.Embed(1, d, rngs=rngs)
        self.mask_tokens = nnx.Embed(cfg.num_mask_tokens, d, rngs=rngs)
        self.output_upscaling = nnx.List(
            [
                nnx.ConvTranspose(d, d // 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                layer_norm(d // 4, 1e-6, rngs=rngs),
                gelu,
                nnx.ConvTranspose(d // 4, d // 8, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                gelu,
            ]
        )
        self.output_hypernetworks_mlps = nnx.List([MLP(d, d, d // 8, 3, rngs=rngs) for _ in range(cfg.num_mask_tokens)])
        self.iou_prediction_head = MLP(d, cfg.iou_head_hidden_dim, cfg.num_mask_tokens, cfg.iou_head_depth, rngs=rngs)

    def _upscale_blocks(self, x: Float[Array, "P h w C"]) -> Float[Array, "P h w 2 2 2 2 c"]:
        """``output_upscaling`` with each output pixel ``(4i + 2a + a', 4j + 2b + b')`` kept at
        ``[i, j, a, b, a', b']``: a stride-2, 2x2 transposed convolution writes every output
        pixel from exactly one input pixel, so it is one matmul per pixel, and the interleave is
        left to the masks, which have fewer channels."""
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = act1(norm(conv_transpose_2x2(up1, x)))
        return act2(conv_transpose_2x2(up2, x))

    def __call__(
        self,
        image_embedding: Float[Array, "h w C"],
        image_pe: Float[Array, "h w C"],
        sparse: Float[Array, "P T C"],
        dense: Float[Array, "#P h w C"],
        token_valid: Bool[Array, "P T"] | None = None,
    ) -> tuple[Float[Array, "P M 4*h 4*w"], Float[Array, "P M"]]:
        """All ``M = num_mask_tokens`` masks and IoU predictions for ``P`` prompts of one image.

        ``dense`` may have batch 1 (no mask prompt: the same dense embedding for every prompt).
        """
        tokens, image = self.attend(image_embedding, image_pe, sparse, dense, token_valid)
        return self.predict_masks(tokens, image), self.predict_iou(tokens)

    def attend(
        self,
        image_embedding: Float[Array, "h w C"],
        image_pe: Float[Array, "h w C"],
        sparse: Float[Array, "P T C"],
        dense: Float[Array, "#P h w C"],
        token_valid: Bool[Array, "P T"] | None = None,
    ) -> tuple[Float[Array, "P T2 C"], Float[Array, "P h w C"]]:
        """The two-way transformer over output tokens + ``sparse``: the processed tokens and image.
        :meth:`predict_iou` and :meth:`predict_masks` finish the job (split so that callers may
        skip the masks)."""
        p = sparse.shape[0]
        output_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]])
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (p, *output_tokens.shape)), sparse], axis=1)
        if token_valid is not None:
            token_valid = jnp.concatenate([jnp.ones((p, output_tokens.shape[0]), bool), token_valid], axis=1)
        src = image_embedding[None] + dense
        hs, src = self.transformer(src, image_pe[None], tokens, token_valid)
        return hs, src.reshape(p, *image_embedding.shape)

    def predict_iou(self, tokens: Float[Array, "P T2 C"]) -> Float[Array, "P M"]:
        return self.iou_prediction_head(tokens[:, 0])

    def predict_masks(
        self, tokens: Float[Array, "P T2 C"], image: Float[Array, "P h w C"]
    ) -> Float[Array, "P M 4*h 4*w"]:
        p, h, w, _ = image.shape
        mask_tokens_out = tokens[:, 1 : 1 + self.cfg.num_mask_tokens]
        upscaled = self._upscale_blocks(image)
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )
        return jnp.einsum("pmc,pijabxyc->pmiaxjby", hyper_in, upscaled).reshape(p, -1, 4 * h, 4 * w)
