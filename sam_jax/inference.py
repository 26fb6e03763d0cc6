"""The jit-compiled functional core: pure functions of ``(graphdef, params, inputs)``.

``graphdef`` (the static structure of a split :class:`~sam_jax.modeling.sam.Sam`) is a static
argument; ``params`` is an ordinary pytree (``nnx.State``) that can be sharded, saved or swapped
without recompiling. Everything here has static shapes: images are padded to the model size and
prompts to point-count buckets, so repeated calls with the same buckets reuse compiled programs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from sam_jax.modeling.sam import Sam, postprocess_masks, preprocess

GraphDef = nnx.GraphDef
Params = nnx.State


def split(model: Sam) -> tuple[GraphDef, Params]:
    """Split a model into its static graph and its parameter pytree (done once per model)."""
    return nnx.split(model)


class Prompts(NamedTuple):
    """A batch of ``P`` prompts for one image, padded to ``N`` point slots (a pytree).

    Coordinates are in the model-input frame (the resized image, 1024 on the long side).
    ``labels`` are -1 (the reference's "not a point"), 0 (background) or 1 (foreground).
    Slots with ``point_valid`` False, a box with ``box_valid`` False and a mask with
    ``mask_valid`` False are absent: they do not change the result.
    """

    coords: Float[Array, "P N 2"]
    labels: Int[Array, "P N"]
    point_valid: Bool[Array, "P N"]
    boxes: Float[Array, "P 4"]
    box_valid: Bool[Array, " P"]
    mask_input: Float[Array, "P M M"]
    mask_valid: Bool[Array, " P"]


def point_bucket(n: int) -> int:
    """Number of point slots compiled for ``n`` points: the next power of two (at least 1)."""
    return 1 << max(n - 1, 0).bit_length()


def make_prompts(
    coords: np.ndarray | Sequence[np.ndarray] | None,
    labels: np.ndarray | Sequence[np.ndarray] | None,
    boxes: np.ndarray | None,
    mask_input: np.ndarray | None,
    *,
    num_prompts: int,
    mask_size: int,
    num_slots: int | None = None,
    pad_prompts_to: int | None = None,
) -> Prompts:
    """Assemble :class:`Prompts` on the host, applying the reference's prompt rules.

    Args:
      coords: ``(P, n, 2)`` points in the model-input frame, a sequence of ``P`` arrays
        ``(n_i, 2)`` (uneven counts, padded here), or None.
      labels: ``(P, n)`` labels in {-1, 0, 1} (or a sequence of ``(n_i,)``), given iff ``coords`` is.
      boxes: ``(P, 4)`` xyxy boxes in the model-input frame, or None.
      mask_input: ``(P, mask_size, mask_size)`` low-res mask logits, or None.
      num_prompts: ``P``.
      mask_size: side of the dense mask prompt (``4 * image_embedding_size``).
      num_slots: point slots to pad to; default :func:`point_bucket` of the most points used.
      pad_prompts_to: add empty prompts up to this many (to reuse compiled programs); their
        outputs are meaningless and should be dropped.

    As in ``PromptEncoder._embed_points``, points without a box get one extra "not a point"
    (label -1) at the origin: the token count changes the result, so it is kept.
    """
    p = num_prompts
    total = p if pad_prompts_to is None else pad_prompts_to
    if total < p:
        raise ValueError(f"pad_prompts_to={total} is smaller than num_prompts={p}")
    point_sets = [np.zeros((0, 2), np.float32)] * p if coords is None else [np.asarray(c, np.float32) for c in coords]
    label_sets = [np.zeros((0,), np.int32)] * p if labels is None else [np.asarray(lab, np.int32) for lab in labels]
    if len(point_sets) != p or len(label_sets) != p:
        raise ValueError(f"expected {p} point sets, got {len(point_sets)} coords and {len(label_sets)} labels")
    if boxes is None:  # the reference's padding point, for every prompt that has points
        point_sets = [np.concatenate([c, np.zeros((1, 2), np.float32)]) if len(c) else c for c in point_sets]
        label_sets = [np.concatenate([lab, [-1]]).astype(np.int32) if len(lab) else lab for lab in label_sets]
    n = max([len(c) for c in point_sets], default=0)
    slots = point_bucket(n) if num_slots is None else num_slots
    if slots < n:
        raise ValueError(f"num_slots={slots} is smaller than the {n} point tokens needed")
    out_coords = np.zeros((total, slots, 2), np.float32)
    out_labels = np.full((total, slots), -1, np.int32)
    valid = np.zeros((total, slots), bool)
    for i, (c, lab) in enumerate(zip(point_sets, label_sets, strict=True)):
        out_coords[i, : len(c)] = c
        out_labels[i, : len(c)] = lab
        valid[i, : len(c)] = True
    out_boxes = np.zeros((total, 4), np.float32)
    if boxes is not None:
        out_boxes[:p] = boxes
    masks = np.zeros((total, mask_size, mask_size), np.float32)
    if mask_input is not None:
        masks[:p] = mask_input
    return Prompts(
        coords=out_coords,
        labels=out_labels,
        point_valid=valid,
        boxes=out_boxes,
        box_valid=np.arange(total) < (p if boxes is not None else 0),
        mask_input=masks,
        mask_valid=np.arange(total) < (p if mask_input is not None else 0),
    )


@functools.partial(jax.jit, static_argnums=0)
def encode_images(
    graphdef: GraphDef, params: Params, images: Int[Array, "B S S 3"], input_sizes: Int[Array, "B 2"]
) -> Float[Array, "B g g D"]:
    """Image embeddings of resized images padded to ``S x S`` (valid top-left ``input_sizes``)."""
    model = nnx.merge(graphdef, params)
    return model.image_encoder(preprocess(images, input_sizes, model.config))


def _decode(model: Sam, embedding: jax.Array, prompts: Prompts, multimask_output: bool):
    sparse, valid, dense = model.prompt_encoder(*prompts)
    masks, iou = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, valid)
    # Token 0 is the single-mask output; tokens 1.. are the multimask outputs (reference).
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, sl], iou[:, sl]


@functools.partial(jax.jit, static_argnums=(0, 4))
def decode(
    graphdef: GraphDef,
    params: Params,
    embedding: Float[Array, "g g D"],
    prompts: Prompts,
    multimask_output: bool,
) -> tuple[Float[Array, "P C m m"], Float[Array, "P C"]]:
    """Low-res mask logits ``(P, C, 4g, 4g)`` and IoU predictions ``(P, C)`` for ``P`` prompts of
    one image (``C`` = 3 with ``multimask_output``, else 1)."""
    return _decode(nnx.merge(graphdef, params), embedding, prompts, multimask_output)


@functools.partial(jax.jit, static_argnums=(0, 4))
def decode_batch(
    graphdef: GraphDef,
    params: Params,
    embeddings: Float[Array, "B g g D"],
    prompts: Prompts,
    multimask_output: bool,
) -> tuple[Float[Array, "B P C m m"], Float[Array, "B P C"]]:
    """:func:`decode` over a batch of images, each with its own ``P`` prompts (leading ``B`` on
    every field of ``prompts``)."""
    model = nnx.merge(graphdef, params)
    return jax.vmap(lambda e, p: _decode(model, e, p, multimask_output))(embeddings, prompts)


@jax.jit
def upscale_masks(
    low_res: Float[Array, "... m m"], rows: Float[Array, "H m"], cols: Float[Array, "W m"]
) -> Float[Array, "... H W"]:
    """Mask logits at the original image size (see :func:`sam_jax.modeling.sam.postprocess_matrices`)."""
    return postprocess_masks(low_res, rows, cols)
