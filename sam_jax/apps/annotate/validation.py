"""Checks of request bodies: prompts for the model and annotation documents to save.

Every function raises ValueError with a message meant for the person at the browser (the server
answers it as ``400 {"error": message}``) and returns clean, typed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam_jax.apps.annotate import rle

MAX_POINTS = 64
MAX_OBJECTS = 5000
MAX_TEXT = 200
SOURCES = ("prompt", "auto", "manual")


@dataclass(frozen=True)
class Prompts:
    """One object's prompts in image pixels: ``points`` ``(N, 2)`` xy, ``labels`` ``(N,)`` 1/0,
    ``box`` ``(4,)`` xyxy or None."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    multimask: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "points": self.points.tolist(),
            "point_labels": self.labels.tolist(),
            "box": None if self.box is None else self.box.tolist(),
            "multimask": self.multimask,
        }


def _number(v: object, what: str) -> float:
    # bool is an int subclass; true/false is never a coordinate.
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    return float(v)


def _integer(v: object, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _bool(v: object, what: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{what} must be true or false, got {v!r}")
    return v


def _text(v: object, what: str, *, empty: bool = True) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT or (not empty and not v.strip()):
        raise ValueError(f"{what} must be a{'' if empty else ' non-empty'} string of at most {MAX_TEXT} characters")
    return v


def prompts(body: dict[str, Any], size: tuple[int, int], *, require: bool = True) -> Prompts:
    """Parse ``{"points": [[x, y], ...], "point_labels": [1, 0, ...], "box": [x1, y1, x2, y2] | null,
    "multimask": bool}`` for an image of ``size`` = ``(H, W)``; coordinates must lie on the image."""
    h, w = size
    points = body.get("points") or []
    labels = body.get("point_labels") or []
    if not isinstance(points, list) or not isinstance(labels, list):
        raise ValueError("points must be a list of [x, y] pairs and point_labels a list of 0/1")
    if len(points) > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} points per object, got {len(points)}")
    if len(points) != len(labels):
        raise ValueError(f"got {len(points)} points but {len(labels)} point_labels")
    xy = np.zeros((len(points), 2), np.float32)
    for i, p in enumerate(points):
        if not isinstance(p, list) or len(p) != 2:
            raise ValueError(f"points[{i}] must be an [x, y] pair, got {p!r}")
        xy[i] = (_number(p[0], f"points[{i}][0]"), _number(p[1], f"points[{i}][1]"))
        if not (0 <= xy[i, 0] <= w and 0 <= xy[i, 1] <= h):
            raise ValueError(f"points[{i}] = {p} is outside the {w}x{h} image")
    lab = np.array([_integer(v, f"point_labels[{i}]", 0, 1) for i, v in enumerate(labels)], np.int32)
    box = body.get("box")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"box must be [x1, y1, x2, y2] or null, got {box!r}")
        box = np.array([_number(v, f"box[{i}]") for i, v in enumerate(box)], np.float32)
        if not (0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h):
            raise ValueError(f"box must satisfy 0 <= x1 <= x2 <= {w} and 0 <= y1 <= y2 <= {h}, got {box.tolist()}")
    if require and not len(xy) and box is None:
        raise ValueError("give at least one point or a box")
    return Prompts(xy, lab, box, _bool(body.get("multimask", True), "multimask"))


def annotation_object(obj: object, size: tuple[int, int], i: int) -> dict[str, Any]:
    """One object of a document to save (see :func:`document`), cleaned."""
    what = f"objects[{i}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be an object")
    prompt_body = obj.get("prompts") or {}
    if not isinstance(prompt_body, dict):
        raise ValueError(f"{what}.prompts must be an object")
    try:
        p = prompts(prompt_body, size, require=False)
    except ValueError as e:
        raise ValueError(f"{what}.prompts: {e}") from None
    mask_index = prompt_body.get("mask_index")
    score = obj.get("score")
    source = obj.get("source", "prompt")
    if source not in SOURCES:
        raise ValueError(f"{what}.source must be one of {', '.join(SOURCES)}, got {source!r}")
    return {
        "id": _integer(obj.get("id"), f"{what}.id", 1, 2**31 - 1),
        "name": _text(obj.get("name", ""), f"{what}.name"),
        "label": _text(obj.get("label"), f"{what}.label", empty=False).strip(),
        "hidden": _bool(obj.get("hidden", False), f"{what}.hidden"),
        "source": source,
        "edited": _bool(obj.get("edited", False), f"{what}.edited"),
        "score": None if score is None else _number(score, f"{what}.score"),
        "prompts": {
            **p.to_json(),
            "mask_index": None if mask_index is None else _integer(mask_index, f"{what}.prompts.mask_index", 0, 2),
        },
        "segmentation": rle.check(obj.get("segmentation"), size, f"{what}.segmentation"),
    }


def document(body: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Parse a document to save: ``{"revision": int, "done": bool, "objects": [object, ...]}``, each
    object ``{"id", "name", "label", "hidden", "source", "edited", "score", "prompts", "segmentation"}``
    with ``segmentation`` a COCO RLE of the ``(H, W)`` = ``size`` image."""
    revision = _integer(body.get("revision"), "revision", 0, 2**53)
    objects = body.get("objects")
    if not isinstance(objects, list) or len(objects) > MAX_OBJECTS:
        raise ValueError(f"objects must be a list of at most {MAX_OBJECTS} objects")
    clean = [annotation_object(o, size, i) for i, o in enumerate(objects)]
    ids = [o["id"] for o in clean]
    if len(set(ids)) != len(ids):
        raise ValueError("object ids must be unique within an image")
    return {"revision": revision, "done": _bool(body.get("done", False), "done"), "objects": clean}


def bounded(body: dict[str, Any], key: str, default: float, lo: float, hi: float, *, integer: bool = False) -> float:
    """``body[key]`` (or ``default``) checked to lie in ``[lo, hi]``."""
    v = body.get(key, default)
    if integer:
        return _integer(v, key, int(lo), int(hi))
    v = _number(v, key)
    if not lo <= v <= hi:
        raise ValueError(f"{key} must be in [{lo}, {hi}], got {v}")
    return v
