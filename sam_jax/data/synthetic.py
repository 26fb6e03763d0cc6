"""Synthetic shapes: textured backgrounds with overlapping filled shapes and their instance masks.

Every scene is a pure function of ``(seed, index)``, so a dataset of them is random-access,
needs no files, and is identical on every machine (NumPy's PCG64 and Pillow's polygon fill are
deterministic). Shapes are drawn in order; each mask is the part of its shape left *visible* by
the shapes drawn after it, and shapes that end up mostly hidden get no mask.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

SHAPE_KINDS = ("ellipse", "rectangle", "triangle", "polygon", "star")
BACKGROUND_KINDS = ("gradient", "stripes", "checker", "blobs")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """What a scene may contain. Lengths are fractions of the image side."""

    size: int = 128
    min_shapes: int = 2
    max_shapes: int = 4
    min_radius: float = 0.18
    max_radius: float = 0.35
    # A shape keeps its mask only if this fraction of it stays visible and it covers min_area of
    # the image: objects someone would draw a box around, not slivers.
    min_visible: float = 0.6
    min_area: float = 0.03
    # Smallest RGB distance between a shape's colour and the background / earlier shapes.
    min_contrast: float = 70.0
    noise_std: float = 6.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float texture: a gradient, stripes, a checkerboard or smooth blobs."""
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    c0, c1 = rng.uniform(0, 255, (2, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 10) * proj + rng.uniform(0, 2 * np.pi))
    elif kind == "checker":
        cells = rng.integers(3, 12)
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    else:
        grid = rng.integers(2, 6)
        low = rng.uniform(0, 255, (grid, grid, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return c0 + (c1 - c0) * t[..., None]


def _outline(rng: np.random.Generator, kind: str, center: np.ndarray, radius: float) -> list[tuple[float, float]]:
    """Polygon vertices (x, y) of a shape of ``kind`` around ``center``, randomly rotated."""
    rot = rng.uniform(0, 2 * np.pi)
    if kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        r = np.stack([radius * np.cos(t), radius * rng.uniform(0.5, 1.0) * np.sin(t)], axis=1)
    elif kind == "rectangle":
        w, h = radius, radius * rng.uniform(0.4, 1.0)
        r = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    else:
        n = {"triangle": 3, "polygon": int(rng.integers(5, 9)), "star": 2 * int(rng.integers(4, 7))}[kind]
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        rad = np.full(n, radius)
        if kind == "star":
            rad[1::2] *= rng.uniform(0.4, 0.6)
        elif kind == "triangle":
            t = t + rng.uniform(-0.3, 0.3, n)
        r = np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)
    rotation = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    return [tuple(p) for p in (r @ rotation.T + center)]


def _contrasting_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float) -> np.ndarray:
    """A random RGB colour at least ``min_dist`` from every colour in ``avoid`` (best of 32 tries)."""
    cands = rng.uniform(0, 255, (32, 3))
    dist = np.min(np.linalg.norm(cands[:, None] - np.asarray(avoid)[None], axis=-1), axis=1)
    ok = np.nonzero(dist >= min_dist)[0]
    return cands[ok[0] if len(ok) else int(np.argmax(dist))]


def render_shapes(rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene.

    Returns:
      image ``(S, S, 3)`` uint8 and masks ``(K, S, S)`` bool, one per sufficiently visible shape
      (``K`` may be 0 .. ``max_shapes``), in drawing order.
    """
    s = cfg.size
    image = _background(rng, s)
    bg_mean = image.reshape(-1, 3).mean(0)
    shapes, colours = [], [bg_mean]
    for _ in range(rng.integers(cfg.min_shapes, cfg.max_shapes + 1)):
        radius = rng.uniform(cfg.min_radius, cfg.max_radius) * s
        center = rng.uniform(0.1 * s, 0.9 * s, 2)
        canvas = Image.new("L", (s, s))
        ImageDraw.Draw(canvas).polygon(_outline(rng, SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))], center, radius), 1)
        mask = np.asarray(canvas, bool)
        colour = _contrasting_colour(rng, colours, cfg.min_contrast)
        colours.append(colour)
        # Flat colour with a mild linear shading, so shapes are not perfectly uniform.
        shade = rng.uniform(-25, 25) * (np.arange(s, dtype=np.float32) / s - 0.5)
        fill = colour + (shade[:, None, None] if rng.integers(2) else shade[None, :, None])
        image = np.where(mask[..., None], fill, image)
        shapes.append(mask)
    image = image + rng.normal(0, cfg.noise_std, image.shape)
    visible, covered = [], np.zeros((s, s), bool)
    for mask in reversed(shapes):
        vis = mask & ~covered
        area = vis.sum()
        if area >= cfg.min_visible * max(mask.sum(), 1) and area >= cfg.min_area * s * s:
            visible.append(vis)
        covered |= mask
    masks = np.stack(visible[::-1]) if visible else np.zeros((0, s, s), bool)
    return np.clip(image, 0, 255).round().astype(np.uint8), masks


def shapes_example(seed: int, index: int, cfg: ShapesConfig = ShapesConfig()) -> dict[str, np.ndarray]:
    """Scene number ``index`` of the stream ``seed``: ``{"image": (S, S, 3) uint8, "masks": (K, S, S) bool}``."""
    image, masks = render_shapes(np.random.default_rng([seed, index]), cfg)
    return {"image": image, "masks": masks}
