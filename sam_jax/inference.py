"""The functional core's public face: pure, jit-compiled functions of ``(graphdef, params, inputs)``.

This module gathers the names users call (see the README); they live in :mod:`sam_jax.core`:

- :func:`split` a model once into ``graphdef`` (static) and ``params`` (an ordinary pytree);
- :func:`encode` images on their canvases into a features pytree (:func:`encode_images`: SAM 1's
  embedding array alone); :func:`dense_pe`;
- :func:`make_prompts` / :func:`drop_absent` build :class:`Prompts` on the host with the
  reference's rules; :func:`decode` / :func:`decode_batch` (or :func:`decoder` with the graph
  bound) give low-res logits and IoU predictions; :func:`postprocess` resizes them to the image
  with a :class:`Resize`.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jaxtyping import Array, Float, Int, UInt8

from sam_jax.core.decode import (
    Decoder,
    GraphDef,
    Params,
    as_features,
    decode,
    decode_batch,
    decoder,
    postprocess,
    split,
)
from sam_jax.core.image import Features, canvas_batch, dense_pe, encode, to_canvas
from sam_jax.core.prompts import Prompts, drop_absent, make_prompts, point_bucket
from sam_jax.core.resize import Resize
from sam_jax.ops.policy import XLA, ExecutionPolicy

__all__ = [
    "Decoder",
    "ExecutionPolicy",
    "Features",
    "GraphDef",
    "Params",
    "Prompts",
    "Resize",
    "as_features",
    "canvas_batch",
    "decode",
    "decode_batch",
    "decoder",
    "dense_pe",
    "drop_absent",
    "encode",
    "encode_images",
    "make_prompts",
    "point_bucket",
    "postprocess",
    "split",
    "to_canvas",
]


@functools.partial(jax.jit, static_argnums=(0, 4), static_argnames=("graphdef", "policy"))
def encode_images(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: UInt8[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    policy: ExecutionPolicy = XLA,
) -> Float[Array, "B g g D"]:
    """SAM 1 image embeddings of images on their canvases (``encode(...)["image_embed"]``)."""
    return encode(graphdef, params, images, input_sizes, policy)["image_embed"]
