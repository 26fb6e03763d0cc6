"""The prompt step of the core: features + prompts -> low-res mask logits and IoU predictions.

``graphdef`` (the static structure of a split model) is a static argument; ``params`` is an
ordinary pytree (``nnx.State``) that can be sharded, saved or swapped without recompiling. Shapes
are static: prompts are padded to point-count buckets (:mod:`sam_jax.core.prompts`), so repeated
calls with the same buckets reuse compiled programs. The policy decides only how the work is
stepped (:meth:`~sam_jax.ops.policy.ExecutionPolicy.prompt_chunk`), never the result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.core.image import Features
from sam_jax.core.prompts import Prompts
from sam_jax.core.resize import Resize, resize
from sam_jax.ops.policy import XLA, ExecutionPolicy

GraphDef = nnx.GraphDef
Params = nnx.State


def split(model: nnx.Module) -> tuple[GraphDef, Params]:
    """Split a model into its static graph and its parameter pytree (done once per model)."""
    return nnx.split(model)


def as_features(features: Features | jax.Array) -> Features:
    """A features pytree; a bare SAM 1 embedding ``(..., g, g, D)`` is wrapped as ``image_embed``."""
    return features if isinstance(features, Mapping) else {"image_embed": features}


def mask_outputs(multimask_output: bool) -> slice:
    """Which of the decoder's mask tokens are returned: token 0 is the single-mask output, tokens
    1.. the multimask outputs (reference)."""
    return slice(1, None) if multimask_output else slice(0, 1)


def attend(
    model: nnx.Module, features: Features, prompts: Prompts, image_pe: Float[Array, "g g D"]
) -> tuple[jax.Array, jax.Array]:
    """Prompt encoder and the decoder's transformer for ``P`` prompts of one image: the processed
    tokens and image, which ``model.mask_decoder.predict_iou`` / ``predict_masks`` finish (split
    so that callers such as the mask generator may skip the masks)."""
    sparse, valid, dense = model.prompt_encoder(*prompts)
    return model.mask_decoder.attend(features["image_embed"], image_pe, sparse, dense, valid)


def in_chunks(step: Callable[[Prompts], object], prompts: Prompts, chunk: int | None):
    """``step(prompts)``, computed ``chunk`` prompts at a time (a ``lax.map``) when ``chunk`` is
    given; the result is the same.

    Step ``i`` takes prompts ``i, i + P/chunk, ...``: a prompt axis split in contiguous blocks
    over devices stays split over the chunk axis, so no device waits on another. Work that does
    not depend on the prompts (the image side of the first layer) is hoisted out by XLA.
    """
    p = prompts.coords.shape[0]
    if chunk is None or chunk >= p:
        return step(prompts)
    if p % chunk:
        raise ValueError(f"a chunk of {chunk} prompts must divide the number of prompts ({p})")
    steps = p // chunk
    split_ = lambda x: x.reshape(chunk, steps, *x.shape[1:]).swapaxes(0, 1)
    merge = lambda x: x.swapaxes(0, 1).reshape(p, *x.shape[2:])
    return jax.tree.map(merge, jax.lax.map(step, jax.tree.map(split_, prompts)))


def _decode(
    model: nnx.Module,
    features: Features,
    prompts: Prompts,
    multimask_output: bool,
    image_pe: jax.Array | None,
    policy: ExecutionPolicy,
) -> tuple[jax.Array, jax.Array]:
    if image_pe is None:
        image_pe = model.prompt_encoder.get_dense_pe()
    outputs = mask_outputs(multimask_output)
    # A family whose model defines ``decode_prompts`` decodes its own way (SAM 2: high-res
    # features, dynamic multimask); SAM 1's step is the one below.
    family_decode = getattr(model, "decode_prompts", None)

    def step(pr: Prompts) -> tuple[jax.Array, jax.Array]:
        if family_decode is not None:
            low_res, iou, *_ = family_decode(features, pr, multimask_output, image_pe)
            return low_res, iou
        tokens, image = attend(model, features, pr, image_pe)
        decoder = model.mask_decoder
        return decoder.predict_masks(tokens, image)[:, outputs], decoder.predict_iou(tokens)[:, outputs]

    return in_chunks(step, prompts, policy.prompt_chunk(prompts.coords.shape[0]))


def _decode_graph(
    graphdef: GraphDef,
    params: Params,
    features: Features | Float[Array, "g g D"],
    prompts: Prompts,
    multimask_output: bool,
    image_pe: Float[Array, "g g D"] | None = None,
    policy: ExecutionPolicy = XLA,
) -> tuple[Float[Array, "P C m m"], Float[Array, "P C"]]:
    """Low-res mask logits ``(P, C, 4g, 4g)`` and IoU predictions ``(P, C)`` for ``P`` prompts of
    one image (``C`` = 3 with ``multimask_output``, else 1).

    ``features``: one image's features (no batch axis), or its bare embedding ``(g, g, D)``.
    ``image_pe``: :func:`~sam_jax.core.image.dense_pe`, to skip recomputing it.
    """
    model = nnx.merge(graphdef, params)
    return _decode(model, as_features(features), prompts, multimask_output, image_pe, policy)


def _decode_batch_graph(
    graphdef: GraphDef,
    params: Params,
    features: Features | Float[Array, "B g g D"],
    prompts: Prompts,
    multimask_output: bool,
    image_pe: Float[Array, "g g D"] | None = None,
    policy: ExecutionPolicy = XLA,
) -> tuple[Float[Array, "B P C m m"], Float[Array, "B P C"]]:
    """:func:`decode` over a batch of images, each with its own ``P`` prompts (leading ``B`` on
    every field of ``features`` and ``prompts``). The image axis is the one split over devices,
    so each image's prompts are stepped as on one device."""
    model = nnx.merge(graphdef, params)
    per_image = dataclasses.replace(policy, devices=1)
    fn = lambda f, p: _decode(model, f, p, multimask_output, image_pe, per_image)
    return jax.vmap(fn)(as_features(features), prompts)


_STATIC = dict(static_argnums=(0, 4, 6), static_argnames=("multimask_output", "policy"))
decode = jax.jit(_decode_graph, **_STATIC)
decode_batch = jax.jit(_decode_batch_graph, **_STATIC)


class Decoder(NamedTuple):
    """:func:`decode` and :func:`decode_batch` with one model's ``graphdef`` bound (see :func:`decoder`)."""

    decode: Callable[..., tuple[jax.Array, jax.Array]]
    decode_batch: Callable[..., tuple[jax.Array, jax.Array]]


@functools.lru_cache(maxsize=8)
def decoder(graphdef: GraphDef) -> Decoder:
    """:func:`decode` / :func:`decode_batch` jitted with ``graphdef`` bound, so that a call does
    not hash the graph (milliseconds for vit_b); ``multimask_output`` and ``policy`` stay static.
    Cached per graph, so predictors and generators of one model share compiled programs."""
    static = dict(static_argnums=(3, 5), static_argnames=("multimask_output", "policy"))
    return Decoder(
        jax.jit(functools.partial(_decode_graph, graphdef), **static),
        jax.jit(functools.partial(_decode_batch_graph, graphdef), **static),
    )


@functools.partial(jax.jit, static_argnums=3)
def postprocess(
    low_res: Float[Array, "... m m"], r: Resize, mask_threshold: Float[Array, ""], return_logits: bool
) -> Float[Array, "... H W"] | Bool[Array, "... H W"]:
    """Mask logits (``return_logits``) or masks (logits above ``mask_threshold``) at the original
    image size: the reference's ``postprocess_masks`` chain, one mask at a time."""
    m = low_res.shape[-1]
    out = jax.lax.map(lambda x: resize(x, r), low_res.reshape(-1, m, m))
    out = out.reshape(*low_res.shape[:-2], *out.shape[1:])
    return out if return_logits else out > mask_threshold
