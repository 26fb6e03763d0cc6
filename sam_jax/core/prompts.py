"""Prompts, once: the :class:`Prompts` pytree the core decodes, the host-side rules that build it
(compile buckets, the reference's padding point), and validation of user prompts (shapes, dtypes,
finiteness and label values, with errors that name what was expected and what came).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

VALID_LABELS = (-1, 0, 1)


def _array(x: object, name: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of numbers, got {type(x).__name__}") from e
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a


def _finite(a: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got NaN or inf in {a.tolist() if a.size <= 16 else name}")


def check_points(
    coords: object, labels: object, *, batched: bool = False, valid_labels: tuple[int, ...] = VALID_LABELS
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(N, 2)`` xy points and ``(N,)`` labels in ``valid_labels`` (default {-1, 0, 1};
    SAM 2 adds its box-corner labels 2 and 3) (``(B, N, 2)``/``(B, N)`` when ``batched``).
    Returns float32 coords and int32 labels."""
    if coords is None or labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    c, lab = _array(coords, "point_coords"), _array(labels, "point_labels")
    lead = 2 if batched else 1
    want = "(B, N, 2)" if batched else "(N, 2)"
    if c.ndim != lead + 1 or c.shape[-1] != 2:
        raise ValueError(f"point_coords must be {want} xy, got shape {c.shape}")
    if lab.shape != c.shape[:-1]:
        raise ValueError(
            f"point_labels must have shape {c.shape[:-1]} to match point_coords {c.shape}, got {lab.shape}"
        )
    _finite(c, "point_coords")
    if lab.dtype.kind == "f" and not np.all(lab == np.round(lab)):
        raise ValueError(f"point_labels must be integers in {valid_labels}, got {lab.tolist()}")
    bad = ~np.isin(lab, valid_labels)
    if bad.any():
        raise ValueError(f"point_labels must be in {valid_labels}, got {sorted(set(lab[bad].tolist()))}")
    return c.astype(np.float32), lab.astype(np.int32)


def check_box(box: object, *, single: bool) -> np.ndarray:
    """Validate an xyxy box: ``(4,)`` when ``single``, else ``(B, 4)`` (``(4,)`` is promoted)."""
    b = _array(box, "box")
    if single and b.shape != (4,):
        raise ValueError(f"box must be (4,) xyxy, got shape {b.shape}")
    if not single:
        if b.ndim == 1 and b.shape == (4,):
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must be (B, 4) xyxy, got shape {b.shape}")
    _finite(b, "box")
    b2 = b.reshape(-1, 4)
    if np.any(b2[:, 2] < b2[:, 0]) or np.any(b2[:, 3] < b2[:, 1]):
        raise ValueError(f"box must be xyxy with x2 >= x1 and y2 >= y1, got {b2.tolist()[:4]}")
    return b.astype(np.float32)


def check_mask_input(mask_input: object, size: int, *, single: bool) -> np.ndarray:
    """Validate low-res mask logits: ``(1, size, size)`` when ``single`` (returns ``(1, size, size)``),
    else ``(B, 1, size, size)`` (returns ``(B, size, size)``)."""
    m = _array(mask_input, "mask_input")
    want = (1, size, size) if single else ("B", 1, size, size)
    if (single and m.shape != want) or (not single and (m.ndim != 4 or m.shape[1:] != (1, size, size))):
        raise ValueError(f"mask_input must be {want} low-res logits (a previous low_res_logits), got shape {m.shape}")
    _finite(m, "mask_input")
    return m.astype(np.float32).reshape(-1, size, size)


def check_point_sets(coords: object, labels: object) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate a batch of point sets: ``(B, N, 2)`` / ``(B, N)`` arrays, or sequences of ``B``
    arrays ``(N_i, 2)`` / ``(N_i,)`` with uneven ``N_i``. Returns lists of float32 / int32 arrays."""
    if coords is None or labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    if isinstance(coords, np.ndarray) and coords.dtype != object:
        c, lab = check_points(coords, labels, batched=True)
        return list(c), list(lab)
    if not isinstance(coords, (list, tuple)) or not isinstance(labels, (list, tuple)):
        raise TypeError(
            f"point_coords must be (B, N, 2) or a list of (N_i, 2) arrays, got {type(coords).__name__} "
            f"with point_labels {type(labels).__name__}"
        )
    if len(coords) != len(labels):
        raise ValueError(f"point_coords has {len(coords)} sets but point_labels has {len(labels)}")
    out = [
        check_points(np.asarray(c).reshape(-1, 2) if np.size(c) == 0 else c, lab)
        for c, lab in zip(coords, labels, strict=True)
    ]
    return [c for c, _ in out], [lab for _, lab in out]


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


def pow2_at_least(n: int, floor: int = 1) -> int:
    """The compile bucket of a count: the next power of two >= ``n``, at least ``floor``. Point
    slots, prompt batches and mask counts are padded to these so that repeated calls with
    similar counts reuse compiled programs."""
    return max(floor, 1 << max(n - 1, 0).bit_length())


def point_bucket(n: int) -> int:
    """Number of point slots compiled for ``n`` points (:func:`pow2_at_least`)."""
    return pow2_at_least(n)


def padding_point_valid(has_points: ArrayLike, has_box: ArrayLike) -> ArrayLike:
    """The reference's padding-point rule (``PromptEncoder._embed_points(pad=boxes is None)``): a
    prompt with points and no box gets one extra "not a point" token (label -1) at the origin.
    The token count changes the result, so the token is kept, marked valid by this rule."""
    return has_points & ~has_box


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

    Points without a box get the reference's padding point (:func:`padding_point_valid`).
    """
    p = num_prompts
    total = p if pad_prompts_to is None else pad_prompts_to
    if total < p:
        raise ValueError(f"pad_prompts_to={total} is smaller than num_prompts={p}")
    point_sets = [np.zeros((0, 2), np.float32)] * p if coords is None else [np.asarray(c, np.float32) for c in coords]
    label_sets = [np.zeros((0,), np.int32)] * p if labels is None else [np.asarray(lab, np.int32) for lab in labels]
    if len(point_sets) != p or len(label_sets) != p:
        raise ValueError(f"expected {p} point sets, got {len(point_sets)} coords and {len(label_sets)} labels")
    for i, (c, lab) in enumerate(zip(point_sets, label_sets, strict=True)):
        # A given point set counts even when empty: the reference pads a (B, 0, 2) points tensor too.
        if padding_point_valid(np.bool_(coords is not None), np.bool_(boxes is not None)):
            point_sets[i] = np.concatenate([c, np.zeros((1, 2), np.float32)])
            label_sets[i] = np.concatenate([lab, [-1]]).astype(np.int32)
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
