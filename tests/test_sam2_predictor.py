"""``SAM2ImagePredictor`` without the reference: hole filling / sprinkle removal against a SciPy
implementation of the reference's definition, the direct mask resize, padding invariance across
compile buckets, and input checking. The parity with ``sam2``'s predictor is in
``test_sam2_predictor_live.py``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sam_jax.convert import sam2_rules
from sam_jax.core.resize import Resize, inside, resize
from sam_jax.models.layers import linear_resize_matrix
from sam_jax.models.sam2.config import get_config
from sam_jax.predictors.sam2 import SAM2ImagePredictor, fill_holes_and_sprinkles

TEST = get_config("sam2_test")


def _random_params(seed: int = 0) -> dict:
    """Random weights of ``sam2_test`` (norm weights near 1, fan-in scaled matrices)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in sam2_rules.expected_shapes(TEST).items():
        x = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) == 1:
            x = (1 + 0.1 * x) if key.endswith("weight") else 0.1 * x
        elif key.endswith("gaussian_matrix"):
            pass
        else:
            x = x / np.sqrt(np.prod(shape[1:]))
        sd[key] = x.astype(np.float32)
    return sam2_rules.to_params(sd, TEST)


@pytest.fixture(scope="module")
def model():
    return sam2_rules.build_image_model(TEST, _random_params())


@pytest.fixture(scope="module")
def predictor(model):
    p = SAM2ImagePredictor(model)
    p.set_image(np.random.default_rng(1).integers(0, 256, (90, 140, 3), dtype=np.uint8))
    return p


# --------------------------------------------------------------------------- hole filling


def _reference_fill(logits: np.ndarray, threshold: float, max_hole: float, max_sprinkle: float) -> np.ndarray:
    """``SAM2Transforms.postprocess_masks``' clean-up as the reference defines it, with SciPy's
    8-connected labelling standing in for its CUDA ``get_connected_components``."""

    def small(binary: np.ndarray, max_area: float) -> np.ndarray:
        labels, _ = ndimage.label(binary, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel())
        return (labels > 0) & (areas[labels] <= max_area)

    out = logits.copy()
    for i in np.ndindex(logits.shape[:-2]):
        if max_hole > 0:
            out[i] = np.where(small(logits[i] <= threshold, max_hole), np.float32(threshold + 10.0), out[i])
        if max_sprinkle > 0:
            out[i] = np.where(small(logits[i] > threshold, max_sprinkle), np.float32(threshold - 10.0), out[i])
    return out


@pytest.mark.parametrize(
    ("threshold", "max_hole", "max_sprinkle"), [(0.0, 4, 0), (0.0, 0, 6), (0.3, 3, 3), (-0.5, 40, 1), (0.0, 0, 0)]
)
def test_fill_holes_and_sprinkles_matches_the_definition(threshold, max_hole, max_sprinkle):
    rng = np.random.default_rng(int(10 * threshold) + max_hole)
    # Smoothed noise: components of many sizes, some touching the border, some only diagonally.
    logits = ndimage.uniform_filter(rng.standard_normal((2, 3, 40, 48)), size=(1, 1, 3, 3)).astype(np.float32) * 4
    got = fill_holes_and_sprinkles(logits, threshold, max_hole, max_sprinkle)
    want = _reference_fill(logits, threshold, max_hole, max_sprinkle)
    np.testing.assert_array_equal(got, want)
    if max_hole or max_sprinkle:
        assert (got != logits).any()


def test_components_are_8_connected():
    logits = np.full((6, 6), -1.0, np.float32)
    logits[1, 1] = logits[2, 2] = 1.0  # two foreground pixels touching at a corner: one component of 2
    assert np.array_equal(fill_holes_and_sprinkles(logits, 0.0, 0, 1), logits)
    assert (fill_holes_and_sprinkles(logits, 0.0, 0, 2)[[1, 2], [1, 2]] == -10.0).all()


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize("size", [(90, 140), (300, 17), (256, 256)])
def test_direct_resize_is_one_bilinear_step(size):
    x = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    want = linear_resize_matrix(32, size[0]) @ x @ linear_resize_matrix(32, size[1]).T
    r = Resize.direct(32, size, canvas=(size[0] + 3, size[1] + 5))
    got = np.asarray(resize(jnp.asarray(x), jax.tree.map(jnp.asarray, r)))
    assert np.abs(got[: size[0], : size[1]] - want).max() <= 1e-5
    assert np.asarray(inside(r)).sum() == size[0] * size[1]


# --------------------------------------------------------------------------- predictor


def test_padded_prompts_give_the_unpadded_result(model, predictor):
    """One click decoded alone (2 point slots) and beside an image with five clicks (8 slots, the
    prompt axis padded too) in one ``predict_batch`` call: the same logits."""
    image = np.random.default_rng(1).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    point = np.array([[30.0, 40.0]])
    _, iou, low = predictor.predict(point, np.array([1]), multimask_output=True)

    batch = SAM2ImagePredictor(model)
    batch.set_image_batch([image, np.zeros((60, 60, 3), np.uint8)])
    five = np.random.default_rng(2).uniform(0, 60, (3, 5, 2))
    _, ious, lows = batch.predict_batch([point, five], [np.array([1]), np.ones((3, 5), int)])
    assert lows[0].shape == low.shape and lows[1].shape == (3, 3, 32, 32)
    assert np.abs(lows[0] - low).max() <= 1e-5
    assert np.abs(ious[0] - iou).max() <= 1e-6


def test_set_image_accepts_pil_and_gray(predictor):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    predictor.set_image(Image.fromarray(rgb))
    from_pil = predictor.get_image_embedding()
    predictor.set_image(rgb)
    np.testing.assert_array_equal(predictor.get_image_embedding(), from_pil)
    assert from_pil.shape == (1, 32, 8, 8)
    predictor.set_image(rgb[..., 0])
    assert predictor._orig_hw == [(50, 70)]


def test_bad_input_is_named(model):
    p = SAM2ImagePredictor(model)
    with pytest.raises(RuntimeError, match=r"An image must be set with \.set_image"):
        p.predict(np.array([[1.0, 2.0]]), np.array([1]))
    with pytest.raises(RuntimeError, match="to generate an embedding"):
        p.get_image_embedding()
    with pytest.raises(TypeError, match="needs a sam_jax Sam2 model"):
        SAM2ImagePredictor(object())
    with pytest.raises(TypeError, match=r"image must be an \(H, W, 3\) uint8 RGB numpy array or a PIL image, got list"):
        p.set_image([[1, 2, 3]])
    with pytest.raises(TypeError, match="must be uint8"):
        p.set_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="image_list must be a non-empty list"):
        p.set_image_batch([])

    p.set_image(np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ValueError, match=r"point_coords must be \(N, 2\) xy, got shape \(3,\)"):
        p.predict(np.array([1.0, 2.0, 3.0]), np.array([1]))
    with pytest.raises(ValueError, match=r"point_labels must be in \(-1, 0, 1, 2, 3\), got \[4\]"):
        p.predict(np.array([[1.0, 2.0]]), np.array([4]))
    with pytest.raises(ValueError, match="point_coords and point_labels must be given together"):
        p.predict(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"same number of objects, got \{'points': 1, 'boxes': 2\}"):
        p.predict(np.array([[1.0, 2.0]]), np.array([1]), box=np.array([[0, 0, 5, 5], [1, 1, 4, 4]]))
    with pytest.raises(ValueError, match=r"x2 >= x1"):
        p.predict(box=np.array([5.0, 0, 1, 5]))
    with pytest.raises(ValueError, match=r"mask_input must be \(1, 32, 32\) or \(B, 1, 32, 32\) low-res logits"):
        p.predict(mask_input=np.zeros((32, 32)))
    with pytest.raises(ValueError, match="must be finite"):
        p.predict(np.array([[np.nan, 2.0]]), np.array([1]))
    with pytest.raises(RuntimeError, match=r"predict_batch works after \.set_image_batch"):
        p.predict_batch([np.array([[1.0, 2.0]])], [np.array([1])])

    p.set_image_batch([np.zeros((40, 50, 3), np.uint8), np.zeros((20, 30, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"predict works on one image, but 2 are set; use predict_batch"):
        p.predict(np.array([[1.0, 2.0]]), np.array([1]))
    with pytest.raises(ValueError, match=r"point_coords_batch must be a list with one entry per image \(2\), got"):
        p.predict_batch([np.array([[1.0, 2.0]])], [np.array([1])])
    p.reset_predictor()
    assert p.num_images == 0 and p.features is None
