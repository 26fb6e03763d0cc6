"""Prompted-segmentation accuracy: mIoU with one box and with one point per object.

Each object of each image is prompted twice, as a user would: with its tight bounding box
(single-mask output, as SAM recommends for boxes; and the three-mask output picking the best
predicted IoU, which is what ``sam-jax segment`` shows), and with one foreground click at the
point farthest inside the object (three-mask output, best predicted IoU). IoU is measured on the
model-input frame (the resized image), against the masks resized the same way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, UInt8
from scipy import ndimage

from sam_jax.core.decode import decode_batch, split
from sam_jax.core.image import encode, valid_region
from sam_jax.core.prompts import Prompts, make_prompts
from sam_jax.data.pipeline import PipelineConfig, examples
from sam_jax.data.sources import Example
from sam_jax.models.layers import linear_resize_matrix
from sam_jax.models.sam.model import Sam
from sam_jax.runtime import sharding
from sam_jax.train.losses import mask_iou


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Mean IoU over ``num_objects`` objects."""

    box_miou: float  # one box, single-mask output
    box_best_miou: float  # one box, best of three masks by predicted IoU
    point_miou: float  # one click, best of three masks by predicted IoU
    num_objects: int


def object_prompts(masks: Bool[np.ndarray, "K S S"]) -> tuple[Float[np.ndarray, "K 4"], Float[np.ndarray, "K 2"]]:
    """Per mask: its tight xyxy box (inclusive pixel indices) and the (x, y) of the pixel farthest
    from its boundary (the usual single-click protocol). Empty masks give zeros."""
    boxes = np.zeros((len(masks), 4), np.float32)
    points = np.zeros((len(masks), 2), np.float32)
    for i, m in enumerate(masks):
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        boxes[i] = xs.min(), ys.min(), xs.max(), ys.max()
        y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]), m.shape)
        points[i] = x, y
    return boxes, points


@functools.partial(jax.jit, static_argnums=0)
def _object_ious(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: UInt8[Array, "B S S 3"],
    input_sizes: Int[Array, "B 2"],
    box_prompts: Prompts,
    point_prompts: Prompts,
    masks: Bool[Array, "B K S S"],
) -> tuple[Float[Array, "B K"], Float[Array, "B K"], Float[Array, "B K"]]:
    """IoUs of the box (single, best-of-three) and point (best-of-three) predictions."""
    features = encode(graphdef, params, images, input_sizes)
    s = images.shape[1]
    inside = valid_region(input_sizes, s)  # (B, S, S)

    def ious(prompts: Prompts, multimask: bool) -> tuple[jax.Array, jax.Array]:
        low_res, iou_pred = decode_batch(graphdef, params, features, prompts, multimask)
        resize = jnp.asarray(linear_resize_matrix(low_res.shape[-1], s), jnp.float32)
        logits = jnp.einsum("rm,bpkmn,sn->bpkrs", resize, low_res, resize, precision=jax.lax.Precision.HIGHEST)
        logits = jnp.where(inside[:, None, None], logits, -1.0)  # outside the image is never predicted
        actual = mask_iou(logits, masks[:, :, None].astype(jnp.float32))
        best = jnp.take_along_axis(actual, jnp.argmax(iou_pred, axis=-1)[..., None], axis=-1)[..., 0]
        return actual[..., 0], best

    box_single, _ = ious(box_prompts, False)
    _, box_best = ious(box_prompts, True)
    _, point_best = ious(point_prompts, True)
    return box_single, box_best, point_best


def _eval_inputs(batch: list[Example], mask_size: int, size: int) -> tuple[tuple, np.ndarray]:
    """Host inputs of :func:`_object_ious` for model-input examples, padded to ``size`` images:
    ``(images, input_sizes, box_prompts, point_prompts, masks)``, and ``mask_valid`` ``(size, K)``."""
    box_prompts, point_prompts = [], []
    for ex in batch:
        boxes, points = object_prompts(ex["masks"])
        k = len(boxes)
        box_prompts.append(make_prompts(None, None, boxes, None, num_prompts=k, mask_size=mask_size))
        labels = np.ones((k, 1), np.int32)
        point_prompts.append(make_prompts(points[:, None], labels, None, None, num_prompts=k, mask_size=mask_size))

    def stack(key: str) -> np.ndarray:
        return sharding.pad_batch(np.stack([ex[key] for ex in batch]), size)

    def stack_prompts(prompts: list[Prompts]) -> Prompts:
        return Prompts(*(sharding.pad_batch(np.stack(f), size) for f in zip(*prompts, strict=True)))

    inputs = (
        stack("image"),
        stack("input_size"),
        stack_prompts(box_prompts),
        stack_prompts(point_prompts),
        stack("masks"),
    )
    return inputs, stack("mask_valid")


def evaluate(
    model: Sam,
    source: Sequence[Example],
    *,
    num_images: int | None = None,
    batch_size: int = 8,
    max_objects: int = 8,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> EvalResult:
    """mIoU of ``model`` over the first ``num_images`` examples of ``source`` (default: all),
    at most ``max_objects`` objects per image (a seeded random subset when there are more).
    ``progress``: a bar on stderr (updated lines when stderr is not a terminal)."""
    from tqdm import tqdm

    mesh = sharding.data_mesh() if mesh is None else mesh
    cfg = model.config
    n = len(source) if num_images is None else min(num_images, len(source))
    pcfg = PipelineConfig(img_size=cfg.img_size, batch_size=batch_size, max_objects=max_objects, shuffle=False)
    ds = examples(source, pcfg)
    graphdef, params = split(model)
    params = sharding.replicate(params, mesh)
    mask_size = cfg.prompt_encoder.mask_input_size
    size = sharding.padded_batch_size(batch_size, mesh)
    results: list[np.ndarray] = []
    with tqdm(total=n, disable=not progress, desc="evaluate", unit="img") as bar:
        for start in range(0, n, batch_size):
            batch = [ds[i] for i in range(start, min(start + batch_size, n))]
            inputs, valid = _eval_inputs(batch, mask_size, size)
            ious = _object_ious(graphdef, params, *sharding.shard_batch(inputs, mesh))
            results.append(np.stack([np.asarray(x)[valid] for x in ious]))
            bar.update(len(batch))
    ious = np.concatenate(results, axis=1)
    return EvalResult(
        box_miou=float(ious[0].mean()),
        box_best_miou=float(ious[1].mean()),
        point_miou=float(ious[2].mean()),
        num_objects=int(ious.shape[1]),
    )
