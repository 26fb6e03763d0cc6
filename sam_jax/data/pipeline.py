"""grain input pipelines: examples from a source to fixed-shape training batches.

An example ``{"image": (H, W, 3) uint8, "masks": (N, H, W) bool}`` becomes what
:mod:`sam_jax.train.step` consumes: the image resized (longest side ``S``, as the predictor does)
and padded to ``S x S``, its valid ``input_size``, and up to ``K`` object masks on an ``R x R`` grid
over the padded input, chosen at random when there are more, padded with ``mask_valid`` False
when fewer. Shuffling, the per-example randomness and threads are grain's, so the iterator's
position can be checkpointed and restored exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from sam_jax.core.image import to_canvas
from sam_jax.core.transforms import preprocess_shape
from sam_jax.data.sources import Example


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Shapes and order of the batches."""

    img_size: int  # S, the model's input side
    batch_size: int
    max_objects: int = 4  # K, prompts per image
    mask_size: int | None = None  # R; default S
    seed: int = 0
    shuffle: bool = True  # shuffle and repeat, reshuffling every epoch; off for endless streams
    num_threads: int = 2
    prefetch: int = 8  # examples read ahead

    @property
    def mask_grid(self) -> int:
        return self.img_size if self.mask_size is None else self.mask_size


def select_objects(example: Example, rng: np.random.Generator, max_objects: int) -> Example:
    """Keep a random subset of at most ``max_objects`` masks (all of them, in order, when fewer)."""
    masks = example["masks"]
    if len(masks) > max_objects:
        masks = masks[np.sort(rng.choice(len(masks), max_objects, replace=False))]
    return {**example, "masks": masks}


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a boolean mask, thresholded at one half (smoother than nearest)."""
    if mask.shape == hw:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return np.asarray(im) >= 128


def resize_example(example: Example, img_size: int, mask_size: int) -> Example:
    """Resize and pad one example, with all its masks, to the model's input frame.

    Returns ``image`` ``(S, S, 3)`` uint8, ``input_size`` ``(2,)`` int32 and ``masks`` ``(N, R, R)``
    bool (``S = img_size``, ``R = mask_size``).
    """
    image, masks = example["image"], example["masks"]
    padded, (h, w) = to_canvas(image, img_size)
    mh, mw = preprocess_shape(image.shape[0], image.shape[1], mask_size)
    out_masks = np.zeros((len(masks), mask_size, mask_size), bool)
    for i, m in enumerate(masks):
        out_masks[i, :mh, :mw] = _resize_mask(m, (mh, mw))
    return {"image": padded, "input_size": np.array([h, w], np.int32), "masks": out_masks}


def pad_objects(example: Example, max_objects: int) -> Example:
    """Pad ``masks`` ``(N, R, R)`` to ``(K, R, R)`` (``K = max_objects``) and add ``mask_valid``
    ``(K,)``: the real masks that are not empty (an object can vanish when resized)."""
    masks = example["masks"]
    if len(masks) > max_objects:
        raise ValueError(f"{len(masks)} masks for max_objects={max_objects}; select objects first")
    out = np.zeros((max_objects, *masks.shape[1:]), bool)
    out[: len(masks)] = masks
    return {**example, "masks": out, "mask_valid": out.any(axis=(1, 2))}


def to_model_input(example: Example, img_size: int, mask_size: int, max_objects: int) -> Example:
    """Resize and pad one example to the model's input frame (:func:`resize_example`), then pad its
    objects (:func:`pad_objects`). An example already in that frame (``input_size`` and an
    ``features`` instead of the ``image``, see :func:`sam_jax.train.loop.embed_examples`) is
    only padded.

    Returns ``image`` (or ``features``), ``input_size`` ``(2,)`` int32, ``masks`` ``(K, R, R)``
    bool and ``mask_valid`` ``(K,)`` bool.
    """
    if "image" in example:
        example = resize_example(example, img_size, mask_size)
    return pad_objects(example, max_objects)


def examples(source: Sequence[Example], cfg: PipelineConfig) -> grain.MapDataset:
    """Random-access model-input examples (see :func:`to_model_input`), endlessly reshuffled when
    ``cfg.shuffle``; the objects kept are drawn per example (and per epoch) from ``cfg.seed``."""
    ds = grain.MapDataset.source(source)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed).repeat()
    k = cfg.max_objects
    ds = ds.random_map(lambda ex, rng: select_objects(ex, rng, k), seed=cfg.seed)
    return ds.map(lambda ex: to_model_input(ex, cfg.img_size, cfg.mask_grid, k))


def batches(ds: grain.MapDataset, cfg: PipelineConfig) -> grain.IterDataset:
    """Batches of ``cfg.batch_size`` stacked examples, read by ``cfg.num_threads`` threads."""
    read = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
    return ds.to_iter_dataset(read).batch(cfg.batch_size, drop_remainder=True)
