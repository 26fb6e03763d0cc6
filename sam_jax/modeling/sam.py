"""The whole model, plus the reference's pre- and post-processing (reference ``sam.py``).

Pre/post-processing are pure functions over arrays with static shapes: images arrive already
padded to ``img_size`` (with their valid size given), and resizing of masks is expressed as two
interpolation matrices so any output size runs as a matmul.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from sam_jax.config import SamConfig
from sam_jax.modeling.common import linear_resize_matrix
from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import PromptEncoder


class Sam(nnx.Module):
    """Segment Anything: image encoder, prompt encoder and mask decoder."""

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.image_encoder = ImageEncoderViT(config.image_encoder, rngs=rngs)
        self.prompt_encoder = PromptEncoder(config.prompt_encoder, rngs=rngs)
        self.mask_decoder = MaskDecoder(config.mask_decoder, rngs=rngs)


def preprocess(
    images: Float[Array, "B S S 3"] | Int[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    config: SamConfig,
) -> Float[Array, "B S S 3"]:
    """Normalise pixels, then zero the padding (reference: normalise, then pad bottom/right).

    ``images`` hold each resized image in their top-left ``input_sizes[b] = (h, w)`` corner.
    """
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(config.pixel_mean, jnp.float32)) / jnp.asarray(config.pixel_std, jnp.float32)
    s = x.shape[1]
    rows = jnp.arange(s)[None, :, None] < input_sizes[:, 0, None, None]
    cols = jnp.arange(s)[None, None, :] < input_sizes[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0)


@functools.lru_cache(maxsize=64)
def postprocess_matrices(
    low_res: int, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices ``(H, low_res)``, ``(W, low_res)`` for the reference's
    upsample-to-``img_size``, crop-to-``input_size``, resize-to-``original_size`` chain."""
    up = linear_resize_matrix(low_res, img_size)
    mats = []
    for axis in range(2):
        crop = up[: input_size[axis]]
        mats.append((linear_resize_matrix(input_size[axis], original_size[axis]) @ crop).astype(np.float32))
    return mats[0], mats[1]


def postprocess_masks(
    masks: Float[Array, "... m m"], rows: Float[Array, "H m"], cols: Float[Array, "W m"]
) -> Float[Array, "... H W"]:
    """Resize low-res mask logits to the original image with matrices from
    :func:`postprocess_matrices` (composing the reference's two bilinear resizes and the crop)."""
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("...ij,wj->...iw", masks, cols, precision=hp)
    return jnp.einsum("hi,...iw->...hw", rows, x, precision=hp)
