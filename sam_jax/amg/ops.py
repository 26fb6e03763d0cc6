"""Jittable pieces of automatic mask generation: stability score, boxes, crop-edge rejection and a
fixed-size greedy NMS (masks are resized with :mod:`sam_jax.core.resize`).

Every function has static shapes and works unchanged under ``jit`` and sharding. Each mirrors one
helper of the reference's ``segment_anything/utils/amg.py`` (or torchvision's ``nms``) and says
which, including the float32 details that decide ties and thresholds.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

# The reference's `is_box_near_crop_edge` tolerance, in pixels.
CROP_EDGE_ATOL = 20.0


class Thresholds(NamedTuple):
    """Filter settings as float32 scalars and flags (a pytree, so changing them never recompiles).

    ``high``/``low`` are ``mask ± stability_score_offset`` summed in float64 and rounded once, as
    the reference's Python-float thresholds are when compared with float32 logits.
    """

    mask: Float[Array, ""]
    high: Float[Array, ""]
    low: Float[Array, ""]
    pred_iou: Float[Array, ""]
    use_pred_iou: Bool[Array, ""]
    stability: Float[Array, ""]
    use_stability: Bool[Array, ""]

    @classmethod
    def make(
        cls, mask_threshold: float, pred_iou_thresh: float, stability_score_thresh: float, offset: float
    ) -> Thresholds:
        f = np.float32
        return cls(
            mask=f(mask_threshold),
            high=f(mask_threshold + offset),
            low=f(mask_threshold - offset),
            pred_iou=f(pred_iou_thresh),
            use_pred_iou=np.bool_(pred_iou_thresh > 0.0),
            stability=f(stability_score_thresh),
            use_stability=np.bool_(stability_score_thresh > 0.0),
        )


class MaskStats(NamedTuple):
    """What the filters need from one mask's full-resolution logits, without keeping them.

    ``high``/``low`` count pixels above the high/low stability thresholds; ``rows``/``cols`` say
    which rows/columns of the thresholded mask hold a pixel. Leading axes may be added by ``map``.
    """

    high: Int[Array, ""]
    low: Int[Array, ""]
    rows: Bool[Array, " Hb"]
    cols: Bool[Array, " Wb"]


def mask_stats(logits: Float[Array, "Hb Wb"], valid: Bool[Array, "Hb Wb"], thr: Thresholds) -> MaskStats:
    """Pixel counts and row/column occupancy of ``logits`` inside ``valid`` (float32 compares, as
    the reference's ``calculate_stability_score`` and mask thresholding).

    Counts go through float32 row sums (exact below 2**24 pixels a row), which XLA:CPU fuses with
    the upscale far better than boolean integer sums; ``max(x) > t`` is ``any(x > t)``.
    """
    x = jnp.where(valid, logits, -jnp.inf)

    def count(t: ArrayLike) -> jax.Array:
        return (x > t).astype(jnp.float32).sum(-1).astype(jnp.int32).sum(-1)

    return MaskStats(high=count(thr.high), low=count(thr.low), rows=x.max(-1) > thr.mask, cols=x.max(-2) > thr.mask)


def stability_score(high: Int[Array, " N"], low: Int[Array, " N"]) -> Float[Array, " N"]:
    """IoU of the masks thresholded at ``+offset`` and ``-offset`` (one holds the other), in
    float32 as the reference's int32 / int32 true division; 0 / 0 is NaN there too."""
    return high.astype(jnp.float32) / low.astype(jnp.float32)


def boxes_from_occupancy(rows: Bool[Array, "N H"], cols: Bool[Array, "N W"]) -> Int[Array, "N 4"]:
    """xyxy boxes with inclusive right/bottom pixel indices, ``0, 0, 0, 0`` for empty masks
    (the reference's ``batched_mask_to_box``, from ``mask.any(-1)`` and ``mask.any(-2)``)."""

    def edges(occ: jax.Array) -> tuple[jax.Array, jax.Array]:
        n = occ.shape[-1]
        idx = jnp.arange(n, dtype=jnp.int32)
        first = jnp.min(jnp.where(occ, idx, n), axis=-1)
        last = jnp.max(jnp.where(occ, idx, -1), axis=-1)
        return first, last

    x0, x1 = edges(cols)
    y0, y1 = edges(rows)
    box = jnp.stack([x0, y0, x1, y1], axis=-1)
    return jnp.where(((x1 >= x0) & (y1 >= y0))[..., None], box, 0)


def near_crop_edge(
    boxes: Int[Array, "N 4"], crop_box: Int[Array, " 4"], image_size: Int[Array, " 2"]
) -> Bool[Array, " N"]:
    """Boxes (in the crop's frame) within ``CROP_EDGE_ATOL`` of a crop edge that is not an image
    edge (the reference's ``is_box_near_crop_edge``). ``image_size`` is ``(H, W)``."""
    boxes = (boxes + jnp.tile(crop_box[:2], 2)).astype(jnp.float32)
    crop = crop_box.astype(jnp.float32)
    image = jnp.stack([0, 0, image_size[1], image_size[0]]).astype(jnp.float32)
    near_crop = jnp.abs(boxes - crop) <= CROP_EDGE_ATOL
    near_image = jnp.abs(boxes - image) <= CROP_EDGE_ATOL
    return jnp.any(near_crop & ~near_image, axis=-1)


def iou_threshold_f32(threshold: float) -> np.float32:
    """The float32 ``t`` with ``iou > t`` iff ``iou > threshold`` for every float32 ``iou``.

    torchvision compares its float32 IoU with the threshold as a double; rounding the threshold
    down to float32 keeps that comparison exact.
    """
    t = np.float32(threshold)
    return np.nextafter(t, np.float32(-np.inf)) if float(t) > threshold else t


def nms_order(*keys: Array, valid: Bool[Array, " N"]) -> Int[Array, " N"]:
    """Processing order for :func:`nms`: valid entries first, then ascending ``keys`` (the first
    key is primary), ties by index, which is torchvision's stable descending sort when the single
    key is ``-score``."""
    return jnp.lexsort((jnp.arange(valid.shape[0]), *reversed(keys), ~valid)).astype(jnp.int32)


def nms(
    boxes: Float[Array, "N 4"] | Int[Array, "N 4"],
    order: Int[Array, " N"],
    valid: Bool[Array, " N"],
    iou_threshold: Float[Array, ""] | float,
) -> Bool[Array, " N"]:
    """Greedy box NMS with torchvision's semantics (``torchvision.ops.nms``); returns keep flags.

    JAX has no NMS that fits: this is written here. Boxes are visited in ``order`` (see
    :func:`nms_order`); a kept box suppresses every later box whose float32 IoU, computed in
    torchvision's operation order, exceeds ``iou_threshold`` (pass :func:`iou_threshold_f32`).

    Fixed size: ``N`` is the cap, the number of candidate slots, and nothing beyond it is ever
    considered. Callers size it to every candidate that can exist (all point-mask slots of a crop,
    all slots of all crops), so the cap never drops a candidate and results equal the reference's
    at any setting. Memory is ``O(N)`` (no IoU matrix); a ``while_loop`` runs once per kept box,
    ``O(N)`` work each.
    """
    n = boxes.shape[0]
    b = boxes.astype(jnp.float32)[order]
    alive0 = valid[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    idx = jnp.arange(n)

    def first_alive(alive: jax.Array, start: jax.Array | int) -> jax.Array:
        cand = alive & (idx >= start)
        return jnp.where(cand.any(), jnp.argmax(cand), n)

    def body(state):
        i, alive, keep = state
        w = jnp.maximum(0.0, jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1))
        h = jnp.maximum(0.0, jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1))
        inter = w * h
        ovr = inter / (areas[i] + areas - inter)
        alive = alive & ~((ovr > iou_threshold) & (idx > i))
        keep = keep.at[i].set(True)
        return first_alive(alive, i + 1), alive, keep

    init = (first_alive(alive0, 0), alive0, jnp.zeros(n, bool))
    _, _, keep = jax.lax.while_loop(lambda s: s[0] < n, body, init)
    return jnp.zeros(n, bool).at[order].set(keep)
