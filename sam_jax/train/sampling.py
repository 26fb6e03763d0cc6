"""Prompts sampled from ground-truth masks inside the jitted train step (SAM's training recipe).

Each object gets either a jittered bounding box or a few points (the first positive, the others
positive or negative), then optionally correction clicks placed in the error region of the
previous prediction, with that prediction fed back as a mask prompt. Shapes are static: every
prompt has ``max_points + correction_rounds`` point slots plus the reference's "not a point"
padding slot, used by :func:`sam_jax.core.prompts.padding_point_valid`'s rule (as the predictor's prompts are),
so a prompt trained here is encoded as the predictor encodes it.

Masks are given on an ``R x R`` grid covering the padded ``S x S`` model input; coordinates are in
the model-input frame (pixels of the resized image).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from sam_jax.core.prompts import Prompts, padding_point_valid


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How prompts are drawn from an object's mask."""

    box_prob: float = 0.5  # share of prompts that are a box; the rest are points
    max_points: int = 3  # a point prompt has 1 .. max_points points, the first positive
    positive_prob: float = 0.5  # each further point is positive with this probability
    box_jitter: float = 0.1  # std of each box coordinate's noise, as a fraction of the box side (SAM)
    box_jitter_max: float = 20 / 1024  # largest noise, as a fraction of the image side (SAM: 20 px)
    correction_rounds: int = 0  # clicks in the previous prediction's error region

    @property
    def num_slots(self) -> int:
        """Point slots per prompt: initial points, correction clicks and the padding point."""
        return self.max_points + self.correction_rounds + 1


def _pixel_coords(flat_index: Int[Array, " ..."], grid: int, scale: float) -> Float[Array, "... 2"]:
    """Centre (x, y) in the model-input frame of pixel ``flat_index`` of a ``grid x grid`` mask."""
    y, x = jnp.divmod(flat_index, grid)
    return (jnp.stack([x, y], axis=-1).astype(jnp.float32) + 0.5) * scale - 0.5


def sample_pixel(
    key: PRNGKeyArray, region: Bool[Array, "R R"], scale: float
) -> tuple[Float[Array, " 2"], Int[Array, ""]]:
    """A uniformly random pixel of ``region``: its (x, y) in the input frame and its flat index.

    An empty region gives pixel 0 (callers mark such points invalid).
    """
    logits = jnp.where(region.reshape(-1), 0.0, -jnp.inf)
    index = jax.random.categorical(key, logits)
    return _pixel_coords(index, region.shape[-1], scale), index


def mask_to_box(mask: Bool[Array, "R R"], scale: float) -> Float[Array, " 4"]:
    """Tight xyxy box (inclusive pixel indices, as SAM's ``batched_mask_to_box``) of ``mask`` in the
    input frame; zeros for an empty mask."""
    grid = mask.shape[-1]
    idx = jnp.arange(grid)
    rows, cols = jnp.any(mask, axis=1), jnp.any(mask, axis=0)
    lo = jnp.stack([jnp.min(jnp.where(cols, idx, grid)), jnp.min(jnp.where(rows, idx, grid))])
    hi = jnp.stack([jnp.max(jnp.where(cols, idx, -1)), jnp.max(jnp.where(rows, idx, -1))])
    box = jnp.concatenate([lo * scale, (hi + 1) * scale - 1]).astype(jnp.float32)
    return jnp.where(jnp.any(mask), box, 0.0)


def jitter_box(
    key: PRNGKeyArray, box: Float[Array, " 4"], input_size: Int[Array, " 2"], img_size: int, cfg: PromptConfig
) -> Float[Array, " 4"]:
    """SAM's box noise: each coordinate moves by N(0, (jitter * side)^2), clipped to
    ``box_jitter_max * img_size``, then the box is kept inside the image and ordered."""
    side = jnp.array([box[2] - box[0], box[3] - box[1]] * 2)
    limit = cfg.box_jitter_max * img_size
    noisy = box + jnp.clip(jax.random.normal(key, (4,)) * cfg.box_jitter * side, -limit, limit)
    hi = jnp.tile(input_size[::-1].astype(jnp.float32) - 1, 2)
    noisy = jnp.clip(noisy, 0.0, hi)
    return jnp.concatenate([jnp.minimum(noisy[:2], noisy[2:]), jnp.maximum(noisy[:2], noisy[2:])])


def initial_prompt(
    key: PRNGKeyArray,
    mask: Bool[Array, "R R"],
    input_size: Int[Array, " 2"],
    img_size: int,
    mask_size: int,
    cfg: PromptConfig,
) -> Prompts:
    """One object's first prompt: a jittered box (probability ``box_prob``) or 1 .. ``max_points``
    points. Returns an unbatched :class:`Prompts` (fields without the leading ``P``)."""
    grid = mask.shape[-1]
    scale = img_size / grid
    k_box, k_jit, k_n, k_lab, k_pts = jax.random.split(key, 5)
    is_box = jax.random.bernoulli(k_box, cfg.box_prob)
    tight = mask_to_box(mask, scale)
    box = jitter_box(k_jit, tight, input_size, img_size, cfg)

    # Negatives come from inside the box around the object when it has background, else anywhere.
    inside = _box_region(tight, grid, scale)
    negative_region = jnp.where(jnp.any(inside & ~mask), inside & ~mask, ~mask)
    n = jax.random.randint(k_n, (), 1, cfg.max_points + 1)
    labels = jax.random.bernoulli(k_lab, cfg.positive_prob, (cfg.max_points,)).at[0].set(True)
    keys = jax.random.split(k_pts, cfg.max_points)
    pos = jax.vmap(lambda k: sample_pixel(k, mask, scale)[0])(keys)
    neg = jax.vmap(lambda k: sample_pixel(k, negative_region, scale)[0])(keys)
    coords = jnp.where(labels[:, None], pos, neg)
    point_valid = (jnp.arange(cfg.max_points) < n) & ~is_box

    extra = cfg.correction_rounds + 1  # correction slots, then the padding point
    return Prompts(
        coords=jnp.concatenate([coords, jnp.zeros((extra, 2), jnp.float32)]),
        labels=jnp.concatenate([labels.astype(jnp.int32), jnp.full((extra,), -1, jnp.int32)]),
        point_valid=jnp.concatenate(
            [point_valid, jnp.zeros((extra - 1,), bool), padding_point_valid(jnp.any(point_valid), is_box)[None]]
        ),
        boxes=jnp.where(is_box, box, 0.0),
        box_valid=is_box,
        mask_input=jnp.zeros((mask_size, mask_size), jnp.float32),
        mask_valid=jnp.asarray(False),
    )


def _box_region(box: Float[Array, " 4"], grid: int, scale: float) -> Bool[Array, "R R"]:
    """Pixels of a ``grid x grid`` mask whose centres lie inside ``box`` (input frame)."""
    centres = (jnp.arange(grid, dtype=jnp.float32) + 0.5) * scale - 0.5
    cols = (centres >= box[0]) & (centres <= box[2])
    rows = (centres >= box[1]) & (centres <= box[3])
    return rows[:, None] & cols[None, :]


def add_correction_click(
    key: PRNGKeyArray,
    prompt: Prompts,
    *,
    slot: int,
    mask: Bool[Array, "R R"],
    pred_logits: Float[Array, "R R"],
    low_res_logits: Float[Array, "m m"],
    img_size: int,
) -> Prompts:
    """Put a click in point ``slot``: a uniformly random pixel where ``pred_logits > 0`` disagrees
    with ``mask`` (positive if missed, negative if spurious), and feed ``low_res_logits`` back as
    the mask prompt. A perfect prediction gets no click. Unbatched, as :func:`initial_prompt`."""
    error = (pred_logits > 0) != mask
    xy, index = sample_pixel(key, error, img_size / mask.shape[-1])
    label = mask.reshape(-1)[index].astype(jnp.int32)
    return prompt._replace(
        coords=prompt.coords.at[slot].set(xy),
        labels=prompt.labels.at[slot].set(label),
        point_valid=prompt.point_valid.at[slot].set(jnp.any(error)),
        mask_input=jax.lax.stop_gradient(low_res_logits),
        mask_valid=jnp.asarray(True),
    )
