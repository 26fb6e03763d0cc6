"""SAM 2 / 2.1 composed from its parts: the image path of ``SAM2Base`` (reference
``sam2/modeling/sam2_base.py``) as :class:`~sam_jax.predictors.sam2.SAM2ImagePredictor` runs it.

Attribute names are ``SAM2Base``'s (``image_encoder``, ``sam_prompt_encoder``, ``sam_mask_decoder``,
``no_mem_embed``), so converted parameters drop in unchanged. The memory modules of the video model
are not part of this class; the converter keeps their tensors beside the parameters
(:mod:`sam_jax.convert.sam2_rules`).

The core (:mod:`sam_jax.core.image`, :mod:`sam_jax.core.decode`) dispatches on two methods every
family's model may define: :meth:`Sam2.embed` (canvases -> features pytree) and
:meth:`Sam2.decode_prompts` (features + prompts -> low-res logits and IoU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, UInt8

from sam_jax.models.sam.prompt_encoder import PromptEncoder
from sam_jax.models.sam2.config import Sam2Config
from sam_jax.models.sam2.image_encoder import ImageEncoder
from sam_jax.models.sam2.mask_decoder import MaskDecoder
from sam_jax.ops.policy import XLA, ExecutionPolicy

# Keys of SAM 2's features pytree (leading batch axis on each): the stride-16 embedding with
# ``no_mem_embed`` added, and the decoder's projected stride-4 / stride-8 FPN levels.
IMAGE_EMBED = "image_embed"
HIGH_RES_FEATS = ("high_res_feats_0", "high_res_feats_1")


class Sam2(nnx.Module):
    """SAM 2's image model: Hiera + FPN image encoder, SAM 1's prompt encoder, the SAM 2 mask decoder
    with high-resolution features, and ``no_mem_embed`` (added to the stride-16 features of an
    image without memory, as ``SAM2ImagePredictor.set_image`` does with ``directly_add_no_mem_embed``).

    ``Sam2(config, rngs=rngs)`` builds random weights; given parts are used as they are (as the
    reference's ``SAM2Base(image_encoder, ...)``).
    """

    def __init__(
        self,
        config: Sam2Config,
        *,
        rngs: nnx.Rngs | None = None,
        image_encoder: ImageEncoder | None = None,
        sam_prompt_encoder: PromptEncoder | None = None,
        sam_mask_decoder: MaskDecoder | None = None,
    ) -> None:
        if rngs is None:
            raise TypeError("Sam2 needs rngs (no_mem_embed and the parts that are not given are drawn from it)")
        self.config = config
        self.image_encoder = image_encoder or ImageEncoder(config.image_encoder, rngs=rngs)
        self.sam_prompt_encoder = sam_prompt_encoder or PromptEncoder(config.prompt_encoder, rngs=rngs)
        self.sam_mask_decoder = sam_mask_decoder or MaskDecoder(config.mask_decoder, rngs=rngs)
        hidden_dim = config.image_encoder.neck.d_model
        # The reference draws trunc_normal(std=0.02); shape (1, 1, C) as its state_dict stores it.
        self.no_mem_embed = nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, (1, 1, hidden_dim)))

    @property
    def prompt_encoder(self) -> PromptEncoder:
        """The prompt encoder under the name the family-agnostic core uses (``dense_pe``)."""
        return self.sam_prompt_encoder

    # --- the image step -------------------------------------------------------------------------

    def forward_image(self, x: Float[Array, "B S S 3"], policy: ExecutionPolicy = XLA) -> dict:
        """``SAM2Base.forward_image``: the encoder's feature dict with FPN levels 0 and 1 projected
        by the decoder's ``conv_s0`` / ``conv_s1`` (done once per image, not per prompt)."""
        out = self.image_encoder(x, policy)
        if self.config.use_high_res_features_in_sam:
            fpn = list(out["backbone_fpn"])
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
            out = {**out, "backbone_fpn": fpn}
        return out

    def embed(
        self,
        images: Float[Array, "B S S 3"] | UInt8[Array, "B S S 3"],
        input_sizes: object = None,
        policy: ExecutionPolicy = XLA,
    ) -> dict:
        """Features of canvases made by :func:`sam_jax.models.sam2.transforms.canvas_batch` (the
        image squashed to ``S x S``, values in [0, 1]; uint8 canvases are scaled by 1/255):

        - ``image_embed`` ``(B, S/16, S/16, C)``: stride-16 features + ``no_mem_embed``;
        - ``high_res_feats_0`` ``(B, S/4, S/4, C/8)``, ``high_res_feats_1`` ``(B, S/8, S/8, C/4)``
          (with ``use_high_res_features_in_sam``, every released config).

        ``input_sizes`` is the core's argument (SAM 2 canvases have no padding); ``policy`` decides
        how Hiera's attention and token-wise layers run (:mod:`sam_jax.ops`).
        """
        del input_sizes
        cfg = self.config
        x = images.astype(jnp.float32)
        if jnp.issubdtype(images.dtype, jnp.integer):
            x = x / 255.0
        # SAM2Transforms' Normalize(mean, std) on [0, 1] values.
        x = (x - jnp.asarray(cfg.pixel_mean, jnp.float32)) / jnp.asarray(cfg.pixel_std, jnp.float32)
        fpn = self.forward_image(x, policy)["backbone_fpn"][-cfg.num_feature_levels :]
        feats = {IMAGE_EMBED: fpn[-1]}
        if cfg.directly_add_no_mem_embed:
            feats[IMAGE_EMBED] = fpn[-1] + self.no_mem_embed[...].reshape(-1)
        for name, level in zip(HIGH_RES_FEATS, fpn[:-1], strict=False):
            feats[name] = level
        return feats

    # --- the prompt step ------------------------------------------------------------------------

    def decode_prompts(
        self,
        features: dict,
        prompts: tuple,
        multimask_output: bool,
        image_pe: Float[Array, "g g C"],
    ) -> tuple[Float[Array, "P M m m"], Float[Array, "P M"], Float[Array, "P 1"]]:
        """``P`` prompts of one image (``features`` without batch axis) -> low-res mask logits
        ``(P, M, 4g, 4g)``, IoU predictions ``(P, M)`` and object-score logits ``(P, 1)``.

        As ``SAM2ImagePredictor._predict``: the prompt encoder, then ``sam_mask_decoder`` with the
        image shared by all prompts (``repeat_image``) and the high-res features. ``M`` is 3 with
        ``multimask_output``; otherwise 1, token 0's mask or, where it is unstable, the best
        multimask output (``dynamic_multimask_via_stability``). Box corners come as points labelled
        2 / 3 (``prompts.boxes`` None); padded slots (``point_valid`` False) do not change the result.
        """
        sparse, valid, dense = self.sam_prompt_encoder(*prompts)
        high_res = None
        if self.config.use_high_res_features_in_sam:
            high_res = tuple(features[name][None] for name in HIGH_RES_FEATS)
        masks, iou, _, object_score_logits = self.sam_mask_decoder(
            features[IMAGE_EMBED][None],
            image_pe[None],
            sparse,
            dense,
            multimask_output,
            high_res_features=high_res,
            token_valid=valid,
        )
        return masks, iou, object_score_logits


def build(config: Sam2Config, rngs: nnx.Rngs) -> Sam2:
    """The family's builder for the registry: a model of ``config`` with random weights."""
    return Sam2(config, rngs=rngs)
