"""The image step of the core: the canvas the encoder sees, its normalisation, and the jitted
encoder call that turns images into a features pytree.

Every entry point (predictors, the mask generator, training, evaluation) puts images on the
canvas with :func:`to_canvas` / :func:`canvas_batch`: resized so the long side is the model's
``img_size`` (the reference's ``ResizeLongestSide``), top-left, zero padding, with the valid
``(h, w)`` kept as ``input_sizes``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, UInt8

from sam_jax.core.transforms import resize_image
from sam_jax.ops.policy import XLA, ExecutionPolicy

# A model's image features: a dict of arrays with a leading batch axis. SAM 1 has one entry,
# ``image_embed`` ``(B, g, g, D)``; SAM 2 adds its high-resolution levels.
Features = dict[str, jax.Array]


def to_canvas(image: np.ndarray, img_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``(H, W, 3)`` uint8 -> the ``(S, S, 3)`` canvas (``S = img_size``) and the valid ``(h, w)``."""
    resized = resize_image(image, img_size)
    canvas = np.zeros((img_size, img_size, 3), np.uint8)
    h, w = resized.shape[:2]
    canvas[:h, :w] = resized
    return canvas, (h, w)


def canvas_batch(images: Sequence[np.ndarray], img_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``images`` on canvases, padded with blank canvases to ``size`` (to reuse compiled programs
    and split evenly over devices): ``(size, S, S, 3)`` uint8 and ``input_sizes`` ``(size, 2)``
    int32. Blank canvases count as full size; their outputs are meaningless and dropped by the
    caller."""
    if size < len(images):
        raise ValueError(f"batch size {size} is smaller than the {len(images)} images")
    batch = np.zeros((size, img_size, img_size, 3), np.uint8)
    input_sizes = np.full((size, 2), img_size, np.int32)
    for i, im in enumerate(images):
        batch[i], input_sizes[i] = to_canvas(im, img_size)
    return batch, input_sizes


def valid_region(input_sizes: Int[Array, "B 2"], size: int) -> Bool[Array, "B S S"]:
    """Pixels of ``size x size`` canvases that hold the image (top-left ``input_sizes``)."""
    rows = jnp.arange(size)[None, :, None] < input_sizes[:, 0, None, None]
    cols = jnp.arange(size)[None, None, :] < input_sizes[:, 1, None, None]
    return rows & cols


def preprocess(
    images: Float[Array, "B S S 3"] | UInt8[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
) -> Float[Array, "B S S 3"]:
    """Normalise pixels, then zero the padding (reference: normalise, then pad bottom/right)."""
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(pixel_std, jnp.float32)
    return jnp.where(valid_region(input_sizes, x.shape[1])[..., None], x, 0.0)


def embed(
    model: nnx.Module,
    images: UInt8[Array, "B S S 3"] | Float[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    policy: ExecutionPolicy = XLA,
) -> Features:
    """:func:`encode` on a merged model (inside other jitted functions, e.g. a training step).

    A family whose model defines ``embed(images, input_sizes, policy)`` computes its own features
    from its own canvases (SAM 2: :meth:`sam_jax.models.sam2.model.Sam2.embed`); SAM 1's path is
    the one below."""
    family_embed = getattr(model, "embed", None)
    if family_embed is not None:
        return family_embed(images, input_sizes, policy)
    cfg = model.config
    x = preprocess(images, input_sizes, cfg.pixel_mean, cfg.pixel_std)
    return {"image_embed": model.image_encoder(x, policy)}


@functools.partial(jax.jit, static_argnums=(0, 4), static_argnames=("graphdef", "policy"))
def encode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: UInt8[Array, "B S S 3"] | Float[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    policy: ExecutionPolicy = XLA,
) -> Features:
    """Features of images on their canvases (:func:`canvas_batch`: uint8; SAM 2's
    :func:`sam_jax.models.sam2.transforms.canvas_batch`: float32 in [0, 1]): for SAM 1
    ``{"image_embed": (B, g, g, D)}``. ``policy`` decides how the encoder runs, not what it
    computes (:mod:`sam_jax.ops`)."""
    return embed(nnx.merge(graphdef, params), images, input_sizes, policy)


@functools.partial(jax.jit, static_argnums=0)
def dense_pe(graphdef: nnx.GraphDef, params: nnx.State) -> Float[Array, "g g D"]:
    """Positional encoding of the embedding grid (a function of the parameters only: callers that
    decode many times compute it once and pass it on as ``image_pe``)."""
    return nnx.merge(graphdef, params).prompt_encoder.get_dense_pe()
