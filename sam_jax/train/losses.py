"""Segmentation losses used to train SAM-style decoders, per mask (reduction is the caller's).

``mask_losses`` is the MedSAM loss (dice + binary cross-entropy) or the SAM paper's (20 focal :
1 dice); the IoU head is trained with a squared error against the IoU each predicted mask
actually reaches. Cross-entropy and focal terms come from optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from sam_jax.train.choices import MASK_LOSSES, MaskLoss

FOCAL_WEIGHT = 20.0  # SAM paper: focal and dice losses in a 20:1 ratio


def dice_loss(logits: Float[Array, "... H W"], targets: Float[Array, "... H W"]) -> Float[Array, " ..."]:
    """Soft dice loss of sigmoid probabilities over ``H, W`` (optax's, smoothing 1)."""
    return optax.losses.dice_loss(logits[..., None], targets[..., None], axis=(-3, -2))


def mask_losses(
    logits: Float[Array, "... H W"], targets: Float[Array, "... H W"], kind: MaskLoss = "dice_bce"
) -> Float[Array, " ..."]:
    """Loss of each mask: ``dice + mean BCE`` (``"dice_bce"``) or ``20 * mean focal + dice``
    (``"focal_dice"``, alpha 0.25, gamma 2 as in SAM). ``targets`` may be soft, in [0, 1], and
    broadcast against ``logits``."""
    targets = jnp.broadcast_to(targets, logits.shape)
    if kind == "dice_bce":
        pixel = optax.sigmoid_binary_cross_entropy(logits, targets)
        return dice_loss(logits, targets) + jnp.mean(pixel, axis=(-2, -1))
    if kind == "focal_dice":
        pixel = optax.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
        return FOCAL_WEIGHT * jnp.mean(pixel, axis=(-2, -1)) + dice_loss(logits, targets)
    raise ValueError(f"mask loss must be one of {MASK_LOSSES}, got {kind!r}")


def mask_iou(
    logits: Float[Array, "... H W"], targets: Float[Array, "... H W"], threshold: float = 0.0
) -> Float[Array, " ..."]:
    """IoU of the thresholded mask ``logits > threshold`` with ``targets > 0.5`` (1 when both are
    empty). Not differentiable: the target of the IoU head."""
    pred = logits > threshold
    gt = targets > 0.5
    inter = jnp.sum(pred & gt, axis=(-2, -1))
    union = jnp.sum(pred | gt, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def iou_head_loss(pred_iou: Float[Array, " ..."], actual_iou: Float[Array, " ..."]) -> Float[Array, " ..."]:
    """Squared error of the IoU head against the IoU the mask reached (gradient-free target)."""
    return jnp.square(pred_iou - jax.lax.stop_gradient(actual_iou))
