"""Automatic mask generation against ``segment_anything.SamAutomaticMaskGenerator`` on the same
random weights and real photos.

Random weights give degenerate masks (logits within about ±2, nearly every box the whole image),
so the settings let masks through: predicted-IoU filter off, a small stability offset, and for the
tiny model a mask threshold of 0.4 (set on both models) so masks are small and boxes differ, which
makes NMS, the crop-edge filter and the crop layers decide something. The full vit_b case uses
``points_per_side=8`` (the reference needs minutes at 32 on this CPU) and a mask threshold of 1.5.

Bar: same number of masks, in the same order; every mask matched at IoU >= 0.99; equal bboxes,
crop boxes and points; predicted IoU and stability score within 1e-4.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import skimage.data
import torch
from flax import nnx
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator as RefGenerator

from sam_jax.amg import SamAutomaticMaskGenerator
from sam_jax.amg.rle import coco_rle_to_mask, rle_to_mask
from sam_jax.build import build_sam

from conftest import fixture_model
from reference_model import build_reference

torch.set_num_threads(2)
SCORE_TOL = 1e-4
SPARSE = dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.01, stability_score_offset=0.05)


@functools.cache
def models(name: str, mask_threshold: float):
    """(reference, ours) with the fixture weights and ``mask_threshold`` on both."""
    ref = build_reference(name)
    ref.mask_threshold = mask_threshold
    ours = fixture_model(name)
    if mask_threshold != ours.config.mask_threshold:
        config = dataclasses.replace(ours.config, mask_threshold=mask_threshold)
        ours = build_sam(config, params=nnx.to_pure_dict(nnx.state(ours)))
    return ref, ours


def as_mask(seg) -> np.ndarray:
    if isinstance(seg, np.ndarray):
        return seg
    return coco_rle_to_mask(seg) if isinstance(seg["counts"], str) else rle_to_mask(seg)


def assert_same_records(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs) > 0
    assert [set(r) for r in ours] == [set(r) for r in theirs]
    a = [mask_utils.encode(np.asfortranarray(as_mask(r["segmentation"]).astype(np.uint8))) for r in ours]
    b = [mask_utils.encode(np.asfortranarray(as_mask(r["segmentation"]).astype(np.uint8))) for r in theirs]
    ious = mask_utils.iou(a, b, [0] * len(b))
    assert np.all(np.diag(ious) >= 0.99), np.diag(ious)  # same masks, same order
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        assert o["bbox"] == t["bbox"], i
        assert o["crop_box"] == t["crop_box"], i
        assert o["point_coords"] == t["point_coords"], i
        assert o["area"] == pytest.approx(t["area"], rel=0.01), i
        assert abs(o["predicted_iou"] - t["predicted_iou"]) <= SCORE_TOL, i
        assert abs(o["stability_score"] - t["stability_score"]) <= SCORE_TOL, i
        # The box (from the scoring pass) describes the rendered mask.
        mask = as_mask(o["segmentation"])
        ys, xs = np.nonzero(mask)
        assert o["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()], i
        assert o["area"] == mask.sum()


CASES = {
    "crop_layers": ("tiny", 0.4, "chelsea", dict(SPARSE, crop_n_layers=1, output_mode="coco_rle")),
    "small_regions": ("tiny", 0.4, "chelsea", dict(SPARSE, crop_n_layers=1, min_mask_region_area=20)),
    # About a third of the masks pass: steps where none does skip upscaling, and failing masks
    # skip their statistics.
    "iou_filter": (
        "tiny",
        0.0,
        "chelsea",
        dict(SPARSE, pred_iou_thresh=0.75, stability_score_thresh=0.0, box_nms_thresh=0.99),
    ),
    # 100 points in steps of 48: two full steps and one of 4 (its own, smaller program).
    "uneven_steps": ("tiny", 0.4, "chelsea", dict(SPARSE, points_per_side=10, points_per_batch=48)),
    "near_duplicates": (
        "tiny",
        0.0,
        "astronaut",
        dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99),
    ),
}


def image(name: str) -> np.ndarray:
    """A photo from scikit-image; ``astronaut`` at half size (256 x 256) to keep the reference quick."""
    img = getattr(skimage.data, name)()
    return img[::2, ::2].copy() if name == "astronaut" else img


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_matches_reference(case):
    name, threshold, img_name, kwargs = CASES[case]
    ref, ours = models(name, threshold)
    img = image(img_name)
    want = RefGenerator(ref, **kwargs).generate(img)
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(img)
    assert_same_records(got, want)
    if case == "crop_layers":
        assert len({tuple(r["crop_box"]) for r in got}) > 2  # masks from several crops survive
    if kwargs.get("output_mode", "binary_mask") == "binary_mask":
        assert all(r["segmentation"].shape == img.shape[:2] for r in got)


def test_step_sizes():
    generator = SamAutomaticMaskGenerator(fixture_model("tiny"), points_per_batch=48)
    assert generator._step_sizes(96) == [48, 48]
    assert generator._step_sizes(100) == [48, 48, 4]
    assert generator._step_sizes(16) == [16]
    assert generator._step_sizes(40) == [48]  # the next power of two would exceed a full step


def test_output_modes_and_batch_agree():
    _, ours = models("tiny", 0.4)
    images = [image("chelsea"), image("chelsea")[::-1].copy()]  # one size: no new programs to compile
    kwargs = dict(SPARSE, crop_n_layers=1)
    coco = SamAutomaticMaskGenerator(ours, output_mode="coco_rle", **kwargs)
    single = [coco.generate(im) for im in images]
    assert coco.generate_batch(images) == single
    raw = SamAutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **kwargs).generate(images[1])
    assert [as_mask(r["segmentation"]).tolist() for r in raw] == [
        as_mask(r["segmentation"]).tolist() for r in single[1]
    ]
    assert [{k: v for k, v in r.items() if k != "segmentation"} for r in raw] == [
        {k: v for k, v in r.items() if k != "segmentation"} for r in single[1]
    ]


def test_vit_b_matches_reference():
    # Logits of the random vit_b lie within about ±3 and cover the image below 1.5: at 1.5 the
    # masks are blobs with distinct boxes, so NMS and the stability filter decide.
    ref, ours = models("vit_b", 1.5)
    kwargs = dict(
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.05,
        stability_score_offset=0.2,
        output_mode="coco_rle",
    )
    img = image("coffee")
    want = RefGenerator(ref, **kwargs).generate(img)
    assert_same_records(SamAutomaticMaskGenerator(ours, **kwargs).generate(img), want)
