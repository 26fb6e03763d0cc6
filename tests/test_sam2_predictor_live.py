"""Live parity of :class:`sam_jax.predictors.sam2.SAM2ImagePredictor` with the reference's
``sam2.sam2_image_predictor.SAM2ImagePredictor`` (``sam2==1.1.0``), same random weights (every
tensor redrawn, :func:`sam2_reference.randomize_`).

Mostly at the ``sam2_test`` config (128 px); one full-size SAM 2.1 hiera_tiny case that goes the
user's way: a ``{"model": state_dict}`` ``.pt`` file, ``convert_checkpoint``, ``load_sam``.

Bars: features and low-res logits / IoU 1e-5 at the test config, 1e-4 at full size; masks equal
except where the reference's upsampled logit is within 1e-3 of the threshold.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("sam2")
import sam2.utils.misc
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor as RefPredictor
from sam2.utils.transforms import SAM2Transforms
from sam2_components import scipy_connected_components
from scipy import ndimage

from sam_jax.build import load_sam
from sam_jax.convert import sam2_rules
from sam_jax.convert.command import convert_checkpoint
from sam_jax.models.sam2.config import get_config
from sam_jax.models.sam2.transforms import squash_image
from sam_jax.predictors.sam2 import SAM2ImagePredictor

import sam2_reference as ref_lib

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)

TOL = 1e-5
FULL_TOL = 1e-4
MASK_MARGIN = 1e-3


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def ref_predictor(model, cfg, **kwargs) -> RefPredictor:
    p = RefPredictor(model, **kwargs)
    # The reference hard-codes the 1024 px feature sizes.
    g = cfg.image_size // cfg.backbone_stride
    p._bb_feat_sizes = [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]
    return p


def image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random image (noise would make every mask a speckle)."""
    rng = np.random.default_rng(seed)
    x = ndimage.zoom(rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)), (8, 8, 1), order=1)[:h, :w]
    return np.clip(x, 0, 255).astype(np.uint8)


def compare(got, want, ref_logits, tol: float, *, return_logits: bool = False) -> dict[str, float]:
    """``(masks, iou, low_res)`` of ours and the reference's; masks must agree where the reference's
    logits (``ref_logits``, its ``return_logits=True`` output) are not within ``MASK_MARGIN`` of 0."""
    masks, iou, low = got
    masks_r, iou_r, low_r = want
    assert masks.dtype == np.float32 and masks.shape == masks_r.shape
    errors = {"low_res": max_abs(low, low_r), "iou": max_abs(iou, iou_r)}
    if return_logits:
        errors["masks"] = max_abs(masks, masks_r)
        assert errors["masks"] <= 10 * tol, errors
    else:
        sure = np.abs(ref_logits) >= MASK_MARGIN
        assert np.array_equal(masks[sure], masks_r[sure])
    assert errors["low_res"] <= tol and errors["iou"] <= tol, errors
    return errors


@pytest.fixture(scope="module")
def small():
    cfg = get_config("sam2_test")
    ref = ref_lib.randomize_(ref_lib.build_from_config(cfg), seed=4)
    ours = sam2_rules.build_image_model(cfg, sam2_rules.to_params(ref_lib.state_dict_numpy(ref), cfg))
    return cfg, ref, ours


@pytest.fixture(scope="module")
def one_image(small):
    cfg, ref, ours = small
    img = image(90, 140, 0)
    rp, op = ref_predictor(ref, cfg), SAM2ImagePredictor(ours)
    with torch.no_grad():
        rp.set_image(img)
    op.set_image(img)
    return rp, op


# --------------------------------------------------------------------------- image step


@pytest.mark.parametrize(("h", "w"), [(90, 140), (300, 200), (128, 128), (40, 700)])
def test_squash_resize_is_sam2_transforms(h, w):
    img = image(h, w, 1)
    want = SAM2Transforms(128, 0.0)(img).numpy()
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    assert max_abs((squash_image(img, 128) - mean) / std, want.transpose(1, 2, 0)) <= 2e-6


def test_set_image_features(one_image):
    rp, op = one_image
    assert max_abs(op.get_image_embedding(), rp.get_image_embedding().numpy()) <= TOL
    for level in range(2):
        got = np.asarray(op.features[f"high_res_feats_{level}"][:1]).transpose(0, 3, 1, 2)
        assert max_abs(got, rp._features["high_res_feats"][level].numpy()) <= TOL, level


CASES = {
    "points": dict(point_coords=[[30.0, 40.0], [100.0, 60.0]], point_labels=[1, 0]),
    "box": dict(box=[10.0, 20.0, 90.0, 70.0]),
    "points+box, single mask": dict(
        point_coords=[[50.0, 40.0]], point_labels=[1], box=[10.0, 20.0, 90.0, 70.0], multimask_output=False
    ),
    "one click, single mask (dynamic)": dict(point_coords=[[70.0, 45.0]], point_labels=[1], multimask_output=False),
    "return_logits": dict(point_coords=[[30.0, 40.0]], point_labels=[1], return_logits=True),
    "normalize_coords=False": dict(
        point_coords=[[0.25, 0.5], [0.7, 0.2]], point_labels=[1, 1], box=[0.1, 0.1, 0.9, 0.8], normalize_coords=False
    ),
    "three objects": dict(
        point_coords=[[[30.0, 40.0]], [[100.0, 60.0]], [[5.0, 85.0]]],
        point_labels=[[1], [1], [0]],
        box=[[10.0, 20.0, 90.0, 70.0], [60.0, 10.0, 139.0, 89.0], [0.0, 0.0, 40.0, 89.0]],
    ),
    "ignored point and labels 2/3": dict(
        point_coords=[[5.0, 5.0], [20.0, 30.0], [80.0, 70.0]], point_labels=[-1, 2, 3]
    ),
    "no prompt": dict(),
    "empty point arrays (the reference pads them)": dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)),
    "empty point arrays and a box": dict(
        point_coords=np.zeros((0, 2)), point_labels=np.zeros(0), box=[10.0, 20.0, 90.0, 70.0]
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_predict(one_image, case):
    rp, op = one_image
    flags = ("multimask_output", "return_logits", "normalize_coords")
    kw = {k: v if k in flags else np.asarray(v) for k, v in CASES[case].items()}
    with torch.no_grad():
        want = rp.predict(**kw)
        logits = rp.predict(**{**kw, "return_logits": True})[0]
    compare(op.predict(**kw), want, logits, TOL, return_logits=kw.get("return_logits", False))


def test_predict_with_mask_input(one_image):
    """A previous call's low-res logits fed back, with and without a new click."""
    rp, op = one_image
    with torch.no_grad():
        _, scores, low_r = rp.predict(np.array([[30.0, 40.0]]), np.array([1]))
    mask_input = low_r[np.argmax(scores)][None]
    for kw in (dict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([0])), {}):
        with torch.no_grad():
            want = rp.predict(mask_input=mask_input, multimask_output=False, **kw)
            logits = rp.predict(mask_input=mask_input, multimask_output=False, return_logits=True, **kw)[0]
        compare(op.predict(mask_input=mask_input, multimask_output=False, **kw), want, logits, TOL)


def test_predict_batch_over_two_images(small):
    """Two images of different sizes, uneven prompts (points only / boxes with a mask input),
    decoded in one call; each image's result equals the reference's loop over images."""
    cfg, ref, ours = small
    images = [image(90, 140, 2), image(150, 100, 3)]
    rp, op = ref_predictor(ref, cfg), SAM2ImagePredictor(ours)
    with torch.no_grad():
        rp.set_image_batch(images)
    op.set_image_batch(images)
    assert max_abs(op.get_image_embedding(), rp.get_image_embedding().numpy()) <= TOL
    mask = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)
    kw = dict(
        point_coords_batch=[np.array([[30.0, 40.0], [100.0, 60.0]]), None],
        point_labels_batch=[np.array([1, 0]), None],
        box_batch=[None, np.array([[10.0, 20.0, 90.0, 140.0], [50.0, 0.0, 99.0, 60.0]])],
        mask_input_batch=[None, mask],
    )
    for multimask in (True, False):
        with torch.no_grad():
            want = rp.predict_batch(**kw, multimask_output=multimask)
            logits = rp.predict_batch(**kw, multimask_output=multimask, return_logits=True)[0]
        got = op.predict_batch(**kw, multimask_output=multimask)
        for i in range(2):
            compare([g[i] for g in got], [w[i] for w in want], logits[i], TOL)


def test_hole_filling_and_sprinkle_removal_match_the_reference(small, monkeypatch):
    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", scipy_connected_components)
    cfg, ref, ours = small
    img = image(90, 140, 6)
    settings = dict(mask_threshold=0.5, max_hole_area=8.0, max_sprinkle_area=6.0)
    rp, op = ref_predictor(ref, cfg, **settings), SAM2ImagePredictor(ours, **settings)
    with torch.no_grad():
        rp.set_image(img)
    op.set_image(img)
    kw = dict(point_coords=np.array([[30.0, 40.0], [100.0, 60.0]]), point_labels=np.array([1, 1]))
    with torch.no_grad():
        want = rp.predict(**kw)
        logits = rp.predict(**kw, return_logits=True)[0]
    got = op.predict(**kw)
    compare(got, want, logits - 0.5, TOL)
    # The clean-up did something: without it the masks differ.
    plain = SAM2ImagePredictor(ours, mask_threshold=0.5)
    plain.set_image(img)
    assert not np.array_equal(plain.predict(**kw)[0], got[0])


# --------------------------------------------------------------------------- full size


@torch.no_grad()
def test_full_size_hiera_tiny_from_a_converted_file(tmp_path):
    """sam2.1_hiera_tiny at 1024 px: the whole SAM2Base (memory modules too) redrawn, saved as an
    official ``{"model": state_dict}`` file, converted (size and version detected), loaded, and run
    through both predictors."""
    ref = ref_lib.randomize_(ref_lib.build_from_yaml("sam2.1_hiera_tiny"), seed=7)
    torch.save({"model": ref.state_dict()}, tmp_path / "sam2.1_hiera_tiny.pt")
    out = convert_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt", tmp_path / "converted")
    ours = load_sam(out)
    assert ours.config.name == "sam2.1_hiera_tiny"

    img = image(600, 800, 8)
    rp, op = RefPredictor(ref), SAM2ImagePredictor(ours)
    rp.set_image(img)
    op.set_image(img)
    errors = {"image_embed": max_abs(op.get_image_embedding(), rp.get_image_embedding().numpy())}
    for level in range(2):
        got = np.asarray(op.features[f"high_res_feats_{level}"][:1]).transpose(0, 3, 1, 2)
        errors[f"high_res_feats_{level}"] = max_abs(got, rp._features["high_res_feats"][level].numpy())
    assert max(errors.values()) <= FULL_TOL, errors

    cases = [
        dict(point_coords=np.array([[300.0, 200.0], [500.0, 420.0]]), point_labels=np.array([1, 0])),
        dict(point_coords=np.array([[410.0, 250.0]]), point_labels=np.array([1]), box=np.array([100, 80, 700, 500])),
    ]
    for kw in cases:
        for multimask in (True, False):
            want = rp.predict(**kw, multimask_output=multimask)
            logits = rp.predict(**kw, multimask_output=multimask, return_logits=True)[0]
            got = op.predict(**kw, multimask_output=multimask)
            errors |= {f"{len(kw)}-{multimask}-{k}": v for k, v in compare(got, want, logits, FULL_TOL).items()}
    print("full-size max-abs errors:", {k: f"{v:.2e}" for k, v in errors.items()})
