"""SAM 2 mask decoder (reference ``sam2/modeling/sam/mask_decoder.py``).

SAM 1's decoder (:mod:`sam_jax.models.sam.mask_decoder`) with four additions:

- an object-score token ahead of the IoU token and a head that predicts whether the object is
  present (``pred_obj_scores``; an MLP or a single Linear);
- high-resolution features: the trunk's stride-4 and stride-8 FPN levels, projected by
  ``conv_s0`` / ``conv_s1`` (done once per image in ``SAM2Base.forward_image``), are added inside
  the upscaling path;
- an optional sigmoid on the IoU head;
- single-mask output that falls back to the best multimask output when the single mask is
  unstable (``dynamic_multimask_via_stability``, eval only), chosen with ``jnp.where`` per prompt.

The two-way transformer is SAM 1's; its MLP is stored as ``lin1``/``lin2`` where the sam2
checkpoint says ``layers.0``/``layers.1`` (the converter renames).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.models.layers import MLP, gelu, layer_norm
from sam_jax.models.sam.transformer import TwoWayTransformer
from sam_jax.models.sam2.config import Sam2MaskDecoderConfig


def stability_scores(mask_logits: Float[Array, "... H W"], delta: float) -> Float[Array, ...]:
    """IoU between the masks thresholded at ``+delta`` and ``-delta`` (1 where both are empty),
    as ``MaskDecoder._get_stability_scores``."""
    area_i = jnp.sum(mask_logits > delta, axis=(-2, -1)).astype(jnp.float32)
    area_u = jnp.sum(mask_logits > -delta, axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


class MaskDecoder(nnx.Module):
    """Masks, IoU predictions, output tokens and object scores for ``B`` prompts."""

    def __init__(self, cfg: Sam2MaskDecoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        d = cfg.transformer_dim
        self.transformer = TwoWayTransformer(cfg.transformer, rngs=rngs)
        self.iou_token = nnx.Embed(1, d, rngs=rngs)
        self.mask_tokens = nnx.Embed(cfg.num_mask_tokens, d, rngs=rngs)
        if cfg.pred_obj_scores:
            self.obj_score_token = nnx.Embed(1, d, rngs=rngs)
        # ConvTranspose kernels are stored flipped relative to PyTorch's (the converter flips).
        self.output_upscaling = nnx.List(
            [
                nnx.ConvTranspose(d, d // 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                layer_norm(d // 4, 1e-6, rngs=rngs),  # LayerNorm2d's eps
                gelu,
                nnx.ConvTranspose(d // 4, d // 8, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                gelu,
            ]
        )
        if cfg.use_high_res_features:
            self.conv_s0 = nnx.Conv(d, d // 8, (1, 1), rngs=rngs)
            self.conv_s1 = nnx.Conv(d, d // 4, (1, 1), rngs=rngs)
        self.output_hypernetworks_mlps = nnx.List([MLP(d, d, d // 8, 3, rngs=rngs) for _ in range(cfg.num_mask_tokens)])
        self.iou_prediction_head = MLP(d, cfg.iou_head_hidden_dim, cfg.num_mask_tokens, cfg.iou_head_depth, rngs=rngs)
        if cfg.pred_obj_scores:
            if cfg.pred_obj_scores_mlp:
                self.pred_obj_score_head = MLP(d, d, 1, 3, rngs=rngs)
            else:
                self.pred_obj_score_head = nnx.Linear(d, 1, rngs=rngs)

    def __call__(
        self,
        image_embeddings: Float[Array, "Bi h w C"],
        image_pe: Float[Array, "1 h w C"],
        sparse_prompt_embeddings: Float[Array, "B T C"],
        dense_prompt_embeddings: Float[Array, "#B h w C"],
        multimask_output: bool,
        high_res_features: tuple[Float[Array, "Bi 4*h 4*w C8"], Float[Array, "Bi 2*h 2*w C4"]] | None = None,
        token_valid: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B M 4*h 4*w"], Float[Array, "B M"], Float[Array, "B K C"], Float[Array, "B 1"]]:
        """``MaskDecoder.forward`` in eval mode: ``(masks, iou_pred, sam_tokens_out, object_score_logits)``.

        ``M`` is 3 with ``multimask_output`` (tokens 1..3), else 1 (token 0, or with dynamic
        multimask the best of 1..3 where token 0's mask is unstable). ``K`` is 3 when
        ``multimask_output`` and ``use_multimask_token_for_obj_ptr``, else 1. The image side
        (``image_embeddings``, ``high_res_features``) may have batch 1, shared by all ``B`` prompts
        (the reference's ``repeat_image=True``). ``high_res_features`` are the projected
        ``(feat_s0, feat_s1)``, required when ``use_high_res_features``. Padded prompt tokens
        (``token_valid`` False) are left out of attention as keys.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            high_res_features,
            token_valid,
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.cfg.dynamic_multimask_via_stability:
            masks, iou_pred = self.dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, :1], iou_pred[:, :1]
        if multimask_output and self.cfg.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            # The single-mask token is the object-memory token, even with multimask output.
            sam_tokens_out = mask_tokens_out[:, :1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: Float[Array, "Bi h w C"],
        image_pe: Float[Array, "1 h w C"],
        sparse_prompt_embeddings: Float[Array, "B T C"],
        dense_prompt_embeddings: Float[Array, "#B h w C"],
        high_res_features: tuple[jax.Array, jax.Array] | None = None,
        token_valid: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B N 4*h 4*w"], Float[Array, "B N"], Float[Array, "B N C"], Float[Array, "B 1"]]:
        """All ``N = num_mask_tokens`` masks and IoU predictions, the mask tokens and the object score."""
        cfg = self.cfg
        b = sparse_prompt_embeddings.shape[0]
        parts = [self.iou_token.embedding[...], self.mask_tokens.embedding[...]]
        if cfg.pred_obj_scores:
            parts.insert(0, self.obj_score_token.embedding[...])
        s = int(cfg.pred_obj_scores)
        output_tokens = jnp.concatenate(parts)
        tokens = jnp.concatenate(
            [jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse_prompt_embeddings], axis=1
        )
        if token_valid is not None:
            token_valid = jnp.concatenate([jnp.ones((b, output_tokens.shape[0]), bool), token_valid], axis=1)

        src = image_embeddings + dense_prompt_embeddings
        _, h, w, c = src.shape
        hs, src = self.transformer(src, image_pe.reshape(1, h, w, c), tokens, token_valid)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1 : s + 1 + cfg.num_mask_tokens]

        src = src.reshape(b, h, w, c)
        up1, norm, act1, up2, act2 = self.output_upscaling
        if cfg.use_high_res_features:
            if high_res_features is None:
                raise ValueError("this decoder uses high-resolution features: pass (feat_s0, feat_s1)")
            feat_s0, feat_s1 = high_res_features
            upscaled = act2(up2(act1(norm(up1(src) + feat_s1))) + feat_s0)
        else:
            upscaled = act2(up2(act1(norm(up1(src)))))

        hyper_in = jnp.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        masks = jnp.einsum("bnc,bhwc->bnhw", hyper_in, upscaled)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if cfg.iou_prediction_use_sigmoid:
            iou_pred = jax.nn.sigmoid(iou_pred)
        if cfg.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            # The reference's default: 10, i.e. the object is assumed present (sigmoid(10) ~ 1).
            object_score_logits = jnp.full((b, 1), 10.0, iou_pred.dtype)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def dynamic_multimask_via_stability(
        self, all_mask_logits: Float[Array, "B N H W"], all_iou_scores: Float[Array, "B N"]
    ) -> tuple[Float[Array, "B 1 H W"], Float[Array, "B 1"]]:
        """Token 0's mask where its stability score reaches the threshold, else the multimask
        output (tokens 1..) with the highest predicted IoU (first one on ties, as ``argmax``)."""
        multimask_logits, multimask_iou = all_mask_logits[:, 1:], all_iou_scores[:, 1:]
        best = jnp.argmax(multimask_iou, axis=-1)
        best_logits = jnp.take_along_axis(multimask_logits, best[:, None, None, None], axis=1)
        best_iou = jnp.take_along_axis(multimask_iou, best[:, None], axis=1)
        single_logits, single_iou = all_mask_logits[:, :1], all_iou_scores[:, :1]
        stable = stability_scores(single_logits, self.cfg.dynamic_multimask_stability_delta)
        stable = stable >= self.cfg.dynamic_multimask_stability_thresh  # (B, 1)
        return (
            jnp.where(stable[:, :, None, None], single_logits, best_logits),
            jnp.where(stable, single_iou, best_iou),
        )
