"""The pieces of automatic mask generation against the reference's own helpers
(``segment_anything.utils.amg``, torchvision's ``nms``), exactly: equal arrays, equal bytes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_anything.utils import amg as ref
from torch.nn import functional as F
from torchvision.ops import nms as tv_nms

from sam_jax.amg import crops, ops, regions, rle
from sam_jax.core.resize import Resize, band, inside, postprocess_matrices, resize
from sam_jax.core.transforms import preprocess_shape

torch.set_num_threads(2)
NMS_SLOTS = 48
_nms = jax.jit(ops.nms)
_order = jax.jit(lambda s, v: ops.nms_order(-s, valid=v))


@pytest.mark.parametrize("size", [(300, 451), (1000, 1000), (480, 17)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_crop_boxes_and_grids_match_reference(size, layers):
    assert crops.generate_crop_boxes(size, layers, 512 / 1500) == ref.generate_crop_boxes(size, layers, 512 / 1500)
    for a, b in zip(
        crops.build_all_layer_point_grids(32, layers, 2), ref.build_all_layer_point_grids(32, layers, 2), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _random_boxes(rng, n, ties):
    xy = rng.integers(0, 40, (n, 2))
    wh = rng.integers(0, 25, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    boxes[rng.random(n) < 0.1] = 0  # empty masks' boxes
    scores = rng.integers(0, 4, n).astype(np.float32) if ties else rng.random(n).astype(np.float32)
    return boxes, scores


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, NMS_SLOTS),
    thresh=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.86, 1.0]),
    ties=st.booleans(),
)
def test_nms_matches_torchvision(seed, n, thresh, ties):
    rng = np.random.default_rng(seed)
    boxes, scores = _random_boxes(rng, NMS_SLOTS, ties)
    valid = np.arange(NMS_SLOTS) < n
    want = tv_nms(torch.tensor(boxes[:n], dtype=torch.float32), torch.tensor(scores[:n]), thresh).numpy()
    order = _order(scores, valid)
    keep = np.asarray(_nms(boxes, order, valid, ops.iou_threshold_f32(thresh)))
    order = np.asarray(order)
    np.testing.assert_array_equal(order[keep[order]], want)


def test_iou_threshold_f32_rounds_down():
    for t in (0.1, 0.7, 0.86, 0.5, 1 / 3):
        t32 = ops.iou_threshold_f32(t)
        assert t32.dtype == np.float32 and float(t32) <= t < float(np.nextafter(t32, np.float32(1)))


def test_boxes_from_occupancy_match_batched_mask_to_box():
    rng = np.random.default_rng(0)
    masks = rng.random((12, 30, 41)) < rng.random((12, 1, 1)) * 0.02
    masks[3] = False
    masks[4, 7, 9] = True
    want = ref.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    got = ops.boxes_from_occupancy(jnp.asarray(masks.any(-1)), jnp.asarray(masks.any(-2)))
    np.testing.assert_array_equal(got, want)


def test_near_crop_edge_matches_reference():
    rng = np.random.default_rng(1)
    crop, image = [100, 50, 300, 250], (260, 330)
    boxes = rng.integers(0, 200, (64, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    want = ref.is_box_near_crop_edge(torch.from_numpy(boxes), crop, [0, 0, image[1], image[0]]).numpy()
    got = ops.near_crop_edge(jnp.asarray(boxes, jnp.int32), jnp.asarray(crop), jnp.asarray(image))
    np.testing.assert_array_equal(got, want)


def _reference_upscale(low: np.ndarray, img_size: int, size: tuple[int, int]) -> np.ndarray:
    """The reference's ``postprocess_masks`` chain."""
    x = F.interpolate(torch.from_numpy(low)[:, None], (img_size, img_size), mode="bilinear", align_corners=False)
    h, w = preprocess_shape(*size, img_size)
    return F.interpolate(x[..., :h, :w], size, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize(("m", "img_size", "size"), [(40, 160, (300, 451)), (256, 1024, (130, 97)), (40, 160, (21, 7))])
def test_upscale_and_stability_match_reference(m, img_size, size):
    rng = np.random.default_rng(2)
    low = rng.standard_normal((3, m, m)).astype(np.float32) * 4
    want = _reference_upscale(low, img_size, size)
    rows, cols = postprocess_matrices(m, img_size, preprocess_shape(*size, img_size), size)
    hb, wb = size[0] + 5, size[1] + 11  # a padded canvas
    rs, rw = band(rows, hb)
    cs, cw = band(cols, wb)
    up = Resize(rs, rw, cs, cw, np.array(size, np.int32))
    assert all(np.array_equal(a, b) for a, b in zip(up, Resize.make(m, img_size, size, (hb, wb)), strict=True))
    got = np.stack([np.asarray(resize(jnp.asarray(x), up)) for x in low])
    # The banded gather is the dense resize of `postprocess_matrices`, whose source positions and
    # weights are computed in float32 as torch computes them; only the two resizes' composition
    # (one matrix instead of two passes) rounds differently.
    np.testing.assert_allclose(got[:, : size[0], : size[1]], want, atol=5e-4)
    dense = np.einsum("hi,nij,wj->nhw", rows.astype(np.float64), low, cols.astype(np.float64))
    np.testing.assert_allclose(got[:, : size[0], : size[1]], dense, atol=1e-5)

    thr = ops.Thresholds.make(0.0, 0.88, 0.95, 1.0)
    stats = [ops.mask_stats(jnp.asarray(g), inside(up), thr) for g in got]
    valid = got[:, : size[0], : size[1]]
    stability = ops.stability_score(jnp.stack([s.high for s in stats]), jnp.stack([s.low for s in stats]))
    np.testing.assert_array_equal(stability, ref.calculate_stability_score(torch.from_numpy(valid), 0.0, 1.0))
    box = ops.boxes_from_occupancy(jnp.stack([s.rows for s in stats]), jnp.stack([s.cols for s in stats]))
    np.testing.assert_array_equal(box, ref.batched_mask_to_box(torch.from_numpy(valid > 0)))


def test_band_refuses_wide_rows():
    with pytest.raises(ValueError, match="wider than 3 taps"):
        band(np.ones((4, 8)), 4)


@pytest.mark.parametrize("kind", ["random", "empty", "full", "first_pixel"])
def test_rle_matches_reference_byte_for_byte(kind):
    rng = np.random.default_rng(3)
    mask = {
        "random": rng.random((37, 53)) < 0.4,
        "empty": np.zeros((37, 53), bool),
        "full": np.ones((37, 53), bool),
        "first_pixel": np.eye(37, 53, dtype=bool),
    }[kind]
    want = ref.mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]
    got = rle.mask_to_rle(mask)
    assert got == want
    assert rle.coco_encode_rle(got) == ref.coco_encode_rle(want)
    np.testing.assert_array_equal(rle.rle_to_mask(got), mask)
    np.testing.assert_array_equal(rle.coco_rle_to_mask(rle.coco_encode_rle(got)), mask)
    assert rle.area_from_rle(got) == ref.area_from_rle(want) == mask.sum()


def test_paste_matches_uncrop_masks():
    mask = np.random.default_rng(4).random((20, 30)) < 0.5
    want = ref.uncrop_masks(torch.from_numpy(mask)[None], [5, 7, 35, 27], 40, 50)[0].numpy()
    np.testing.assert_array_equal(rle.paste(mask, [5, 7, 35, 27], (40, 50)), want)


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [3, 30, 10_000])
def test_remove_small_regions_matches_reference(mode, area):
    rng = np.random.default_rng(5)
    mask = rng.random((60, 70)) < 0.45
    got, changed = regions.remove_small_regions(mask, area, mode)
    want, want_changed = ref.remove_small_regions(mask, area, mode)
    assert changed == want_changed
    np.testing.assert_array_equal(got, want)
