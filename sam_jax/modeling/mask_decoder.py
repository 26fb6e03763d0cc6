"""Mask decoder: output tokens, two-way transformer, upscaling, hypernetwork MLPs and the IoU
head (reference ``mask_decoder.py``)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.config import MaskDecoderConfig
from sam_jax.modeling.common import MLP, gelu, layer_norm, sequential
from sam_jax.modeling.transformer import TwoWayTransformer


class MaskDecoder(nnx.Module):
    """Predicts ``num_mask_tokens`` masks (token 0: single-mask output; 1..3: multimask) and
    their IoU scores for each prompt."""

    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        d = cfg.transformer_dim
        self.transformer = TwoWayTransformer(cfg, rngs=rngs)
        self.iou_token = nnx.Embed(1, d, rngs=rngs)
        self.mask_tokens = nnx.Embed(cfg.num_mask_tokens, d, rngs=rngs)
        # ConvTranspose kernels are stored flipped relative to PyTorch's (the converter flips).
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

    def __call__(
        self,
        image_embedding: Float[Array, "h w C"],
        image_pe: Float[Array, "h w C"],
        sparse: Float[Array, "P T C"],
        dense: Float[Array, "P h w C"],
        token_valid: Bool[Array, "P T"] | None = None,
    ) -> tuple[Float[Array, "P M 4h 4w"], Float[Array, "P M"]]:
        """All ``M = num_mask_tokens`` masks and IoU predictions for ``P`` prompts of one image."""
        p = sparse.shape[0]
        output_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]])
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (p, *output_tokens.shape)), sparse], axis=1)
        if token_valid is not None:
            token_valid = jnp.concatenate([jnp.ones((p, output_tokens.shape[0]), bool), token_valid], axis=1)
        src = image_embedding[None] + dense
        hs, src = self.transformer(src, image_pe[None], tokens, token_valid)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.cfg.num_mask_tokens]

        upscaled = sequential(self.output_upscaling, src.reshape(dense.shape))  # (P, 4h, 4w, C/8)
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )
        masks = jnp.einsum("pmc,phwc->pmhw", hyper_in, upscaled)
        return masks, self.iou_prediction_head(iou_token_out)
