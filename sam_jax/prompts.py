"""Validation of user prompts: shapes, dtypes, finiteness and label values, with errors that name
what was expected and what came. NumPy in, NumPy out."""

from __future__ import annotations

import numpy as np

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


def check_points(coords: object, labels: object, *, batched: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(N, 2)`` xy points and ``(N,)`` labels in {-1, 0, 1} (``(B, N, 2)``/``(B, N)``
    when ``batched``). Returns float32 coords and int32 labels."""
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
        raise ValueError(f"point_labels must be integers in {VALID_LABELS}, got {lab.tolist()}")
    bad = ~np.isin(lab, VALID_LABELS)
    if bad.any():
        raise ValueError(f"point_labels must be in {VALID_LABELS}, got {sorted(set(lab[bad].tolist()))}")
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
