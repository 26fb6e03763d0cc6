"""Data: synthetic scenes, folder and COCO sources, the grain pipeline and its checkpointable position."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax.data.pipeline import PipelineConfig, batches, examples, select_objects, to_model_input
from sam_jax.data.sources import CocoInstances, MaskFolder, SyntheticShapes
from sam_jax.data.synthetic import ShapesConfig, render_shapes, shapes_example

SHAPES = ShapesConfig(size=64)


def test_synthetic_scenes_are_deterministic_and_masks_are_visible_parts():
    a, b = shapes_example(3, 7, SHAPES), shapes_example(3, 7, SHAPES)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["masks"], b["masks"])
    assert not np.array_equal(a["image"], shapes_example(3, 8, SHAPES)["image"])
    counts = []
    for i in range(30):
        image, masks = render_shapes(np.random.default_rng(i), SHAPES)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert masks.dtype == bool and masks.shape[1:] == (64, 64)
        # Visible parts never overlap and each is large enough to prompt.
        assert masks.sum(0).max(initial=0) <= 1
        assert all(m.sum() >= SHAPES.min_area * 64 * 64 for m in masks)
        counts.append(len(masks))
    assert 1 <= np.mean(counts) <= SHAPES.max_shapes


def test_shapes_differ_from_their_surroundings():
    image, masks = render_shapes(np.random.default_rng(0), ShapesConfig(size=96, noise_std=0.0))
    img = image.astype(np.float64)
    for m in masks:
        ring = np.zeros_like(m)
        ys, xs = np.nonzero(m)
        ring[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
        inside, around = img[m].mean(0), img[ring & ~m].mean(0)
        assert np.linalg.norm(inside - around) > 10


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_mask_folder_reads_label_images_and_mask_folders(tmp_path):
    rng = np.random.default_rng(0)
    _write_png(tmp_path / "images/a.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _write_png(tmp_path / "images/b.jpg", rng.integers(0, 255, (10, 12, 3), dtype=np.uint8))
    labels = np.zeros((20, 30), np.uint8)
    labels[2:5, 3:9], labels[10:15, 20:25] = 7, 3
    _write_png(tmp_path / "masks/a.png", labels)
    one = np.zeros((10, 12), np.uint8)
    one[1:4, 1:4] = 255
    _write_png(tmp_path / "masks/b/0.png", one)
    src = MaskFolder(tmp_path)
    assert len(src) == 2
    a, b = src[0], src[1]
    assert a["image"].shape == (20, 30, 3) and a["masks"].shape == (2, 20, 30)
    np.testing.assert_array_equal(a["masks"][0], labels == 3)  # ascending label values
    np.testing.assert_array_equal(a["masks"][1], labels == 7)
    np.testing.assert_array_equal(b["masks"], (one > 0)[None])
    (tmp_path / "images/c.png").write_bytes((tmp_path / "images/a.png").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"c\.png"):
        MaskFolder(tmp_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_coco_source_decodes_polygons_and_rle_and_skips_crowds(tmp_path):
    _write_png(tmp_path / "img/x.png", np.zeros((40, 50, 3), np.uint8))
    rle_mask = np.zeros((40, 50), np.uint8, order="F")
    rle_mask[20:30, 5:15] = 1
    rle = mask_utils.encode(rle_mask)
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 2, 30, 2, 30, 12, 10, 12]]},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": rle},
    ]
    doc = {
        "images": [{"id": 1, "file_name": "x.png", "height": 40, "width": 50}],
        "annotations": [{**a, "area": 1.0, "bbox": [0, 0, 1, 1]} for a in anns],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    src = CocoInstances(tmp_path / "ann.json", tmp_path / "img")
    ex = src[0]
    assert len(src) == 1 and ex["masks"].shape == (2, 40, 50)
    assert ex["masks"][0][5, 20] and not ex["masks"][0][20, 20]
    np.testing.assert_array_equal(ex["masks"][1], rle_mask.astype(bool))


def test_to_model_input_resizes_pads_and_marks_objects():
    image = np.full((60, 30, 3), 200, np.uint8)
    masks = np.zeros((2, 60, 30), bool)
    masks[0, :30], masks[1, 30:, :15] = True, True
    out = to_model_input({"image": image, "masks": masks}, img_size=40, mask_size=20, max_objects=3)
    assert out["image"].shape == (40, 40, 3) and out["masks"].shape == (3, 20, 20)
    np.testing.assert_array_equal(out["input_size"], [40, 20])
    assert (out["image"][:, :20] == 200).all() and (out["image"][:, 20:] == 0).all()
    np.testing.assert_array_equal(out["mask_valid"], [True, True, False])
    assert out["masks"][0, :10, :10].all() and not out["masks"][0, 10:].any() and not out["masks"][:, :, 10:].any()
    assert out["masks"][1, 10:, :5].all() and out["masks"][1].sum() == 50
    picked = select_objects({"image": image, "masks": np.zeros((6, 2, 2), bool)}, np.random.default_rng(0), 4)
    assert picked["masks"].shape == (4, 2, 2)
    speck = np.zeros((1, 60, 30), bool)
    speck[0, 31, 7] = True  # one pixel: gone at a third of the size, so not an object to prompt
    out = to_model_input({"image": image, "masks": np.concatenate([masks, speck])}, 40, 20, 4)
    np.testing.assert_array_equal(out["mask_valid"], [True, True, False, False])


def test_embedded_examples_are_only_padded_and_draw_objects_per_epoch():
    """The cached-embedding path: examples already in the model frame keep all their masks, and the
    pipeline draws a new subset of them every epoch."""
    masks = np.zeros((6, 8, 8), bool)
    for i in range(6):
        masks[i, i] = True
    embedded = {
        "features": {"image_embed": np.zeros((2, 2, 4), np.float32)},
        "input_size": np.array([32, 32], np.int32),
    }
    cached = [{**embedded, "masks": masks}]
    cfg = PipelineConfig(img_size=32, batch_size=1, max_objects=2, mask_size=8, seed=0, shuffle=True)
    ds = examples(cached, cfg)
    picks = set()
    for epoch in range(6):
        ex = ds[epoch]
        assert set(ex) == {"features", "input_size", "masks", "mask_valid"} and ex["mask_valid"].all()
        picks.add(tuple(int(np.argmax(m.any(axis=1))) for m in ex["masks"]))
    assert len(picks) > 1 and all(a < b for a, b in picks)  # different subsets, each in the original order


def test_pipeline_batches_are_deterministic_and_resume_from_saved_position():
    cfg = PipelineConfig(img_size=64, batch_size=2, max_objects=3, mask_size=32, seed=5, shuffle=True)
    source = [shapes_example(0, i, SHAPES) for i in range(5)]
    first = iter(batches(examples(source, cfg), cfg))
    seen = [next(first) for _ in range(4)]  # 8 examples: crosses into a reshuffled second epoch
    assert seen[0]["image"].shape == (2, 64, 64, 3) and seen[0]["masks"].shape == (2, 3, 32, 32)
    again = iter(batches(examples(source, cfg), cfg))
    for b in seen:
        np.testing.assert_array_equal(next(again)["image"], b["image"])
    resumed = iter(batches(examples(source, cfg), cfg))
    fresh = iter(batches(examples(source, cfg), cfg))
    next(fresh), next(fresh)
    resumed.set_state(fresh.get_state())
    np.testing.assert_array_equal(next(resumed)["masks"], seen[2]["masks"])
    stream = SyntheticShapes(SHAPES, seed=0, length=3)
    assert isinstance(grain.MapDataset.source(stream)[2]["image"], np.ndarray)
