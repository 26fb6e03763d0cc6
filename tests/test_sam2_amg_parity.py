"""Automatic mask generation with SAM 2 against the reference's ``sam2.automatic_mask_generator.
SAM2AutomaticMaskGenerator`` (``sam2==1.1.0``), on the ``sam2_test`` config (128 px) with the same
random weights (every tensor redrawn, :func:`sam2_reference.randomize_`).

Random weights give degenerate predictions (logits within about ±2, most masks covering half the
image at threshold 0), so the settings let masks through: a ``mask_threshold`` of 0.5 (0.8 after
the m2m refinement) so masks are small blobs with distinct boxes, a small stability offset and
threshold, the predicted-IoU filter low (predictions lie in about 0.35 .. 0.8). Cases: the filters
on (10 masks), crop layers (23, from 3 crops), ``use_m2m`` (8), every filter off (63, 48 of them
empty), single-mask output, and ``min_mask_region_area`` (the reference's predictor fills holes and
removes sprinkles of the low-res logits; its CUDA kernel is replaced by SciPy here), with and without m2m.

Bar: same number of masks in the same order, every mask matched at IoU >= 0.99 (two empty masks
match), equal bboxes, crop boxes and points; predicted IoU and stability score within 1e-4.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

pytest.importorskip("sam2")
import sam2.utils.misc
import skimage.data
import torch
from pycocotools import mask as mask_utils
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as RefGenerator
from sam2_components import scipy_connected_components

import sam_jax
from sam_jax.amg.rle import coco_rle_to_mask, rle_to_mask
from sam_jax.convert import sam2_rules
from sam_jax.models.sam2.config import get_config

import sam2_reference as ref_lib

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)

SCORE_TOL = 1e-4
BASE = dict(
    points_per_side=8,
    mask_threshold=0.5,
    pred_iou_thresh=0.4,
    stability_score_thresh=0.005,
    stability_score_offset=0.02,
)
CASES = {
    "filters": dict(BASE, box_nms_thresh=0.95),
    "crop_layers": dict(BASE, points_per_side=6, pred_iou_thresh=0.0, crop_n_layers=1, output_mode="coco_rle"),
    "m2m": dict(BASE, points_per_side=6, mask_threshold=0.8, pred_iou_thresh=0.0, box_nms_thresh=0.9, use_m2m=True),
    "filters_off": dict(
        BASE, mask_threshold=0.3, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="uncompressed_rle"
    ),
    "single_mask": dict(BASE, pred_iou_thresh=0.0, multimask_output=False, box_nms_thresh=0.95),
    "min_region_area": dict(BASE, pred_iou_thresh=0.0, box_nms_thresh=0.95, min_mask_region_area=40),
    "min_region_area_m2m": dict(
        BASE,
        points_per_side=6,
        mask_threshold=0.8,
        pred_iou_thresh=0.0,
        box_nms_thresh=0.9,
        use_m2m=True,
        min_mask_region_area=40,
    ),
}


@functools.cache
def models():
    cfg = get_config("sam2_test")
    ref = ref_lib.randomize_(ref_lib.build_from_config(cfg), seed=4)
    ours = sam2_rules.build_image_model(cfg, sam2_rules.to_params(ref_lib.state_dict_numpy(ref), cfg))
    return cfg, ref, ours


@functools.cache
def image() -> np.ndarray:
    return skimage.data.chelsea()[::3, ::3].copy()  # (100, 151)


def reference(cfg, ref, **kwargs) -> RefGenerator:
    gen = RefGenerator(ref, **kwargs)
    g = cfg.image_size // cfg.backbone_stride  # the reference hard-codes the 1024 px feature sizes
    gen.predictor._bb_feat_sizes = [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]
    return gen


def as_mask(seg) -> np.ndarray:
    if isinstance(seg, np.ndarray):
        return seg
    return coco_rle_to_mask(seg) if isinstance(seg["counts"], str) else rle_to_mask(seg)


def assert_same_records(ours: list[dict], theirs: list[dict]) -> float:
    """The bar above; returns the smallest mask IoU."""
    assert len(ours) == len(theirs) > 0
    assert [set(r) for r in ours] == [set(r) for r in theirs]
    a = [as_mask(r["segmentation"]) for r in ours]
    b = [as_mask(r["segmentation"]) for r in theirs]
    enc = lambda ms: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms]
    ious = np.diag(mask_utils.iou(enc(a), enc(b), [0] * len(b))).copy()
    both_empty = np.array([not x.any() and not y.any() for x, y in zip(a, b, strict=True)])
    ious[both_empty] = 1.0
    assert np.all(ious >= 0.99), ious  # same masks, same order
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        assert o["bbox"] == t["bbox"], i
        assert o["crop_box"] == t["crop_box"], i
        assert o["point_coords"] == t["point_coords"], i
        assert o["area"] == pytest.approx(t["area"], rel=0.01, abs=1), i
        assert abs(o["predicted_iou"] - t["predicted_iou"]) <= SCORE_TOL, i
        s, st = o["stability_score"], t["stability_score"]
        assert (np.isnan(s) and np.isnan(st)) or abs(s - st) <= SCORE_TOL, i
        assert o["area"] == a[i].sum()
    return float(ious.min())


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, monkeypatch):
    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", scipy_connected_components)
    kwargs = CASES[case]
    cfg, ref, ours = models()
    img = image()
    with torch.no_grad():
        want = reference(cfg, ref, **kwargs).generate(img)
    got = sam_jax.SAM2AutomaticMaskGenerator(ours, **kwargs).generate(img)
    assert_same_records(got, want)
    if case == "crop_layers":
        assert len({tuple(r["crop_box"]) for r in got}) > 2  # masks from several crops survive
    if case == "filters_off":
        assert any(not as_mask(r["segmentation"]).any() for r in got)  # empty masks pass with the filters off
    if "min_mask_region_area" in kwargs:  # the clean-up changed the result
        plain = dict(kwargs, min_mask_region_area=0)
        other = sam_jax.SAM2AutomaticMaskGenerator(ours, **plain).generate(img)
        masks = lambda records: [as_mask(r["segmentation"]) for r in records]
        assert len(other) != len(got) or any(
            not np.array_equal(a, b) for a, b in zip(masks(other), masks(got), strict=False)
        )
    if kwargs.get("output_mode", "binary_mask") == "binary_mask":
        assert all(r["segmentation"].shape == img.shape[:2] for r in got)


def test_arguments():
    _, _, ours = models()
    gen = sam_jax.SAM2AutomaticMaskGenerator(ours)
    assert (gen.pred_iou_thresh, gen.mask_threshold, gen.use_m2m, gen.multimask_output) == (0.8, 0.0, False, True)
    assert len(gen.point_grids[0]) == 32 * 32
    assert sam_jax.SAM2AutomaticMaskGenerator(ours, min_mask_region_area=10).min_mask_region_area == 10
    with pytest.raises(ValueError, match="min_mask_region_area"):
        sam_jax.SAM2AutomaticMaskGenerator(ours, min_mask_region_area=-1)
    with pytest.raises(ValueError, match="mask_threshold"):
        sam_jax.SAM2AutomaticMaskGenerator(ours, mask_threshold=float("nan"))
    with pytest.raises(TypeError, match="Sam2"):
        sam_jax.SAM2AutomaticMaskGenerator(object())
