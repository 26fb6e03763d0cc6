"""The jit-compiled functional core: pure functions of ``(graphdef, params, inputs)``.

``graphdef`` (the static structure of a split :class:`~sam_jax.modeling.sam.Sam`) is a static
argument; ``params`` is an ordinary pytree (``nnx.State``) that can be sharded, saved or swapped
without recompiling. Everything here has static shapes: images are padded to the model size and
prompts to point-count buckets, so repeated calls with the same buckets reuse compiled programs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Bool, Float, Int

from sam_jax.modeling.sam import Sam, band, banded_resize, postprocess_masks, postprocess_matrices, preprocess
from sam_jax.sharding import DATA_AXIS

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

    ``boxes``/``box_valid`` or ``mask_input``/``mask_valid`` may be None when no prompt of the
    batch has one (see :func:`drop_absent`): that is a different, cheaper program (no box tokens;
    one shared dense embedding instead of ``P``), chosen by the pytree's structure, not its data.
    """

    coords: Float[Array, "P N 2"]
    labels: Int[Array, "P N"]
    point_valid: Bool[Array, "P N"]
    boxes: Float[Array, "P 4"] | None
    box_valid: Bool[Array, " P"] | None
    mask_input: Float[Array, "P M M"] | None
    mask_valid: Bool[Array, " P"] | None


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


def drop_absent(prompts: Prompts) -> Prompts:
    """``prompts`` (NumPy, on the host) with the box fields set to None when no prompt has a box,
    and the mask fields when none has a mask. The result is the same; the program is cheaper."""
    if prompts.box_valid is not None and not np.any(prompts.box_valid):
        prompts = prompts._replace(boxes=None, box_valid=None)
    if prompts.mask_valid is not None and not np.any(prompts.mask_valid):
        prompts = prompts._replace(mask_input=None, mask_valid=None)
    return prompts


@functools.partial(jax.jit, static_argnums=0)
def encode_images(
    graphdef: GraphDef, params: Params, images: Int[Array, "B S S 3"], input_sizes: Int[Array, "B 2"]
) -> Float[Array, "B g g D"]:
    """Image embeddings of resized images padded to ``S x S`` (valid top-left ``input_sizes``)."""
    model = nnx.merge(graphdef, params)
    return model.image_encoder(preprocess(images, input_sizes, model.config))


@functools.partial(jax.jit, static_argnums=0)
def dense_pe(graphdef: GraphDef, params: Params) -> Float[Array, "g g D"]:
    """Positional encoding of the embedding grid (a function of the parameters only: callers that
    decode many times compute it once and pass it to :func:`decode` as ``image_pe``)."""
    return nnx.merge(graphdef, params).prompt_encoder.get_dense_pe()


# Prompts each device decodes together when decoding is chunked (see :func:`prompt_chunk`): at
# vit_b size one prompt's image-side activations are (4096, 256) float32, 4 MiB, so a chunk of 4
# keeps a layer's working set within a CPU's caches instead of streaming P of them through memory.
PROMPTS_PER_DEVICE_CHUNK = 4


def prompt_chunk(num_prompts: int, num_devices: int, platform: str) -> int | None:
    """Prompts per step when decoding ``num_prompts`` split over ``num_devices`` in steps (a
    ``lax.map``): on CPU, up to :data:`PROMPTS_PER_DEVICE_CHUNK` per device, dividing each
    device's share; None (one batched step) elsewhere or when one step would hold them all."""
    if platform != "cpu" or num_prompts % num_devices:
        return None
    local = num_prompts // num_devices
    per_device = max(k for k in range(1, PROMPTS_PER_DEVICE_CHUNK + 1) if local % k == 0)
    return None if per_device == local else per_device * num_devices


def _decode_all(
    model: Sam,
    embedding: jax.Array,
    prompts: Prompts,
    image_pe: jax.Array,
    outputs: slice,
    iou_floor: jax.Array | None,
    skip_mesh: Mesh | None,
):
    sparse, valid, dense = model.prompt_encoder(*prompts)
    tokens, image = model.mask_decoder.attend(embedding, image_pe, sparse, dense, valid)
    iou = model.mask_decoder.predict_iou(tokens)[:, outputs]
    masks = lambda t, im: model.mask_decoder.predict_masks(t, im)[:, outputs]
    if iou_floor is None:
        return masks(tokens, image), iou
    # Upscaling is half the work; skip it for prompts none of whose masks can pass the IoU filter.
    needed = jnp.any(iou > iou_floor, axis=1)
    # zeros_like keeps the image's type under shard_map (varying over the mesh), as cond needs.
    empty = lambda t, im: jnp.zeros_like(im, jnp.float32, jax.eval_shape(masks, t, im).shape)
    if skip_mesh is None:  # one decision for the whole batch
        return jax.lax.cond(jnp.any(needed), masks, empty, tokens, image), iou
    # One decision per prompt: each device upscales its own prompts one at a time.
    one = lambda x: jax.lax.cond(x[2], masks, empty, x[0][None], x[1][None])[0]
    per_device = lambda t, im, nd: jax.lax.map(one, (t, im, nd))
    spec = PartitionSpec(DATA_AXIS)
    return jax.shard_map(per_device, mesh=skip_mesh, in_specs=spec, out_specs=spec)(tokens, image, needed), iou


def _decode(
    model: Sam,
    embedding: jax.Array,
    prompts: Prompts,
    multimask_output: bool,
    image_pe: jax.Array | None = None,
    chunk: int | None = None,
    iou_floor: jax.Array | None = None,
    skip_mesh: Mesh | None = None,
):
    if image_pe is None:
        image_pe = model.prompt_encoder.get_dense_pe()
    # Token 0 is the single-mask output; tokens 1.. are the multimask outputs (reference).
    outputs = slice(1, None) if multimask_output else slice(0, 1)
    p = prompts.coords.shape[0]
    if chunk is None or chunk >= p:
        return _decode_all(model, embedding, prompts, image_pe, outputs, iou_floor, skip_mesh)
    if p % chunk:
        raise ValueError(f"prompt_chunk={chunk} must divide the number of prompts ({p})")
    # Step i decodes prompts i, i + p/chunk, ...: a prompt axis split in contiguous blocks over
    # devices stays split over the chunk axis, so no device waits on another. Work that does
    # not depend on the prompts (the image side of the first layer) is hoisted out by XLA.
    steps = p // chunk
    split = lambda x: x.reshape(chunk, steps, *x.shape[1:]).swapaxes(0, 1)
    merge = lambda x: x.swapaxes(0, 1).reshape(p, *x.shape[2:])
    step = lambda pr: _decode_all(model, embedding, pr, image_pe, outputs, iou_floor, skip_mesh)
    return jax.tree.map(merge, jax.lax.map(step, jax.tree.map(split, prompts)))


def _decode_graph(
    graphdef: GraphDef,
    params: Params,
    embedding: Float[Array, "g g D"],
    prompts: Prompts,
    multimask_output: bool,
    image_pe: Float[Array, "g g D"] | None = None,
    prompt_chunk: int | None = None,
    iou_floor: Float[Array, ""] | None = None,
    skip_mesh: Mesh | None = None,
) -> tuple[Float[Array, "P C m m"], Float[Array, "P C"]]:
    """Low-res mask logits ``(P, C, 4g, 4g)`` and IoU predictions ``(P, C)`` for ``P`` prompts of
    one image (``C`` = 3 with ``multimask_output``, else 1).

    ``image_pe``: :func:`dense_pe`, to skip recomputing it. ``prompt_chunk`` (static, dividing
    ``P``): decode that many prompts at a time (see :func:`prompt_chunk`); the result is the same.
    ``iou_floor``: masks are needed only where their IoU prediction exceeds it (a filter that
    follows); the logits of a step's prompts none of whose predictions do are left at zero.
    ``skip_mesh`` (static; the mesh the prompt axis is split over): decide that per prompt, each
    device upscaling its prompts one at a time (for CPUs: a batch of upscalings gains nothing
    there), instead of once per step.
    """
    model = nnx.merge(graphdef, params)
    return _decode(model, embedding, prompts, multimask_output, image_pe, prompt_chunk, iou_floor, skip_mesh)


def _decode_batch_graph(
    graphdef: GraphDef,
    params: Params,
    embeddings: Float[Array, "B g g D"],
    prompts: Prompts,
    multimask_output: bool,
    image_pe: Float[Array, "g g D"] | None = None,
    prompt_chunk: int | None = None,
) -> tuple[Float[Array, "B P C m m"], Float[Array, "B P C"]]:
    """:func:`decode` over a batch of images, each with its own ``P`` prompts (leading ``B`` on
    every field of ``prompts``)."""
    model = nnx.merge(graphdef, params)
    fn = lambda e, p: _decode(model, e, p, multimask_output, image_pe, prompt_chunk)
    return jax.vmap(fn)(embeddings, prompts)


decode = jax.jit(_decode_graph, static_argnums=(0, 4, 6, 8))
decode_batch = jax.jit(_decode_batch_graph, static_argnums=(0, 4, 6))


class Decoder(NamedTuple):
    """:func:`decode` and :func:`decode_batch` with one model's ``graphdef`` bound (see :func:`decoder`)."""

    decode: Callable[..., tuple[jax.Array, jax.Array]]
    decode_batch: Callable[..., tuple[jax.Array, jax.Array]]


@functools.lru_cache(maxsize=8)
def decoder(graphdef: GraphDef) -> Decoder:
    """:func:`decode` / :func:`decode_batch` jitted with ``graphdef`` bound, so that a call does
    not hash the graph (milliseconds for vit_b); ``multimask_output`` stays static. Cached per
    graph, so predictors and generators of one model share compiled programs."""
    return Decoder(
        jax.jit(functools.partial(_decode_graph, graphdef), static_argnums=(3, 5, 7)),
        jax.jit(functools.partial(_decode_batch_graph, graphdef), static_argnums=(3, 5)),
    )


class Resize(NamedTuple):
    """:func:`~sam_jax.modeling.sam.band`-ed rows and columns of
    :func:`~sam_jax.modeling.sam.postprocess_matrices` for one image size (a pytree)."""

    row_start: Int[Array, " H"]
    row_weights: Float[Array, "H K"]
    col_start: Int[Array, " W"]
    col_weights: Float[Array, "W K"]

    @classmethod
    def make(cls, low_res: int, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]) -> Resize:
        rows, cols = postprocess_matrices(low_res, img_size, input_size, original_size)
        return cls(*band(rows, rows.shape[0]), *band(cols, cols.shape[0]))


@functools.partial(jax.jit, static_argnums=3)
def postprocess(
    low_res: Float[Array, "... m m"], resize: Resize, mask_threshold: Float[Array, ""], return_logits: bool
) -> Float[Array, "... H W"] | Bool[Array, "... H W"]:
    """Mask logits (``return_logits``) or masks (logits above ``mask_threshold``) at the original
    image size: the reference's ``postprocess_masks`` chain, one mask at a time."""
    m = low_res.shape[-1]
    out = jax.lax.map(lambda x: banded_resize(x, *resize), low_res.reshape(-1, m, m))
    out = out.reshape(*low_res.shape[:-2], *out.shape[1:])
    return out if return_logits else out > mask_threshold


@jax.jit
def upscale_masks(
    low_res: Float[Array, "... m m"], rows: Float[Array, "H m"], cols: Float[Array, "W m"]
) -> Float[Array, "... H W"]:
    """Mask logits at the original image size (see :func:`sam_jax.modeling.sam.postprocess_matrices`)."""
    return postprocess_masks(low_res, rows, cols)
