"""The bf16 mode (``sam_jax.runtime.precision``) for both families: what ``cast_model`` changes,
``load_sam(dir, dtype=...)``, and how close bf16 predictions stay to fp32 on real photos.

The closeness bars sit a little under what was measured (fixture weights, 3 points x 3 masks,
the predictors' own prompt handling, CPU): SAM 1 ``tiny`` on coffee, mask IoU min 0.974 (mean
0.987); SAM 2 ``sam2_test`` on chelsea, min 0.944 (mean 0.972). Random weights give some small
masks (1-3 % of the photo), whose IoU moves most. They are sanity bars for a mode that is not
held to parity, not parity bars (the full-size vit_b figures are in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from flax import nnx
from PIL import Image

import sam_jax
from sam_jax.amg.cli import build_parser
from sam_jax.build import save_sam
from sam_jax.cli import main
from sam_jax.convert import sam2_rules
from sam_jax.io import read_image
from sam_jax.models.sam2.config import get_config as sam2_config
from sam_jax.models.sam2.model import Sam2
from sam_jax.predictors.sam import SamPredictor
from sam_jax.predictors.sam2 import SAM2ImagePredictor
from sam_jax.runtime.precision import cast_model, resolve_dtype

from conftest import WEIGHTS_SEED, fixture_model
from reference_weights import random_state_dict

SAM1_MIN_IOU = 0.96  # measured 0.974
SAM2_MIN_IOU = 0.93  # measured 0.944
MEAN_IOU = 0.96  # measured 0.987 (SAM 1), 0.972 (SAM 2)


@functools.cache
def sam2_test_model() -> Sam2:
    """``sam2_test`` with the weights of the committed SAM 2 fixtures (``sam2_tiny.npz``)."""
    cfg = sam2_config("sam2_test")
    state_dict = random_state_dict(sam2_rules.expected_shapes(cfg), WEIGHTS_SEED)
    return sam2_rules.build_image_model(cfg, sam2_rules.to_params(state_dict, cfg))


@functools.cache
def cast_sam2_test_model() -> Sam2:
    return cast_model(sam2_test_model())


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boolean masks ``(..., H, W)``, 1 where both are empty."""
    a, b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    inter = np.sum(a & b, axis=(1, 2))
    union = np.sum(a | b, axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def predictions(predictor, image: np.ndarray) -> list[np.ndarray]:
    """Masks of three single points (three masks each) on ``image``."""
    h, w = image.shape[:2]
    predictor.set_image(image)
    points = [(w / 2, h / 2), (w / 4, h / 3), (3 * w / 4, 2 * h / 3)]
    return [predictor.predict(np.array([p], np.float32), np.array([1]), multimask_output=True)[0] for p in points]


def bf16_against_fp32(make_predictor, fp32_model, bf16_model, image) -> np.ndarray:
    ious = [
        mask_ious(a.astype(bool), b.astype(bool))
        for a, b in zip(
            predictions(make_predictor(fp32_model), image),
            predictions(make_predictor(bf16_model), image),
            strict=True,
        )
    ]
    return np.concatenate(ious)


def leaves(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(model)))]


def matmul_settings(model: nnx.Module) -> list[tuple]:
    """(path, dtype, preferred_element_type) of every Linear / Conv / ConvTranspose."""
    kinds = (nnx.Linear, nnx.Conv, nnx.ConvTranspose)
    return [(p, m.dtype, m.preferred_element_type) for p, m in nnx.iter_modules(model) if isinstance(m, kinds)]


def param_dtypes(model: nnx.Module) -> set[str]:
    return {str(x.dtype) for x in jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}


def test_cast_model_changes_a_copy_of_either_family():
    for model, cast in (
        (fixture_model("tiny"), cast_model(fixture_model("tiny"))),
        (sam2_test_model(), cast_sam2_test_model()),
    ):
        assert type(cast) is type(model)
        assert param_dtypes(cast) == {"bfloat16"}
        assert param_dtypes(model) == {"float32"}  # the original is untouched
        settings = matmul_settings(cast)
        assert settings and all(d == jnp.bfloat16 and out == jnp.float32 for _, d, out in settings)
        assert all(d is None for _, d, _ in matmul_settings(model))


def test_cast_model_and_resolve_dtype_reject_bad_input():
    with pytest.raises(TypeError, match="Flax NNX model, got dict"):
        cast_model({}, jnp.bfloat16)
    with pytest.raises(TypeError, match="floating-point dtype, got int8"):
        cast_model(fixture_model("tiny"), jnp.int8)
    assert resolve_dtype(None) == jnp.float32
    assert resolve_dtype("bfloat16") == resolve_dtype(jnp.bfloat16) == jnp.bfloat16
    for bad in ("float16", "int8", "bf16", 3):
        with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'bfloat16'\)"):
            resolve_dtype(bad)


def test_sam1_bf16_masks_stay_close_to_fp32():
    model = fixture_model("tiny")
    ious = bf16_against_fp32(SamPredictor, model, cast_model(model), skimage.data.coffee())
    print(f"SAM 1 tiny, coffee: bf16 vs fp32 mask IoU min {ious.min():.4f} mean {ious.mean():.4f}")
    assert ious.min() >= SAM1_MIN_IOU and ious.mean() >= MEAN_IOU, ious


def test_load_sam_dtype_and_sam2_bf16_predictor(tmp_path):
    """``load_sam(dir, dtype="bfloat16")`` is ``cast_model`` of the fp32 load, for SAM 2 too, and
    that model runs ``SAM2ImagePredictor`` close to fp32."""
    model = sam2_test_model()
    save_sam(model, tmp_path / "sam2")
    fp32 = sam_jax.load_sam(tmp_path / "sam2")
    assert isinstance(fp32, Sam2) and param_dtypes(fp32) == {"float32"}
    bf16 = sam_jax.load_sam(tmp_path / "sam2", dtype="bfloat16")
    assert isinstance(bf16, Sam2) and param_dtypes(bf16) == {"bfloat16"}
    # Read as bf16 on the host: the same parameters and layer settings as cast_model of the fp32 load.
    cast = cast_sam2_test_model()
    assert all(np.array_equal(a, b) for a, b in zip(leaves(bf16), leaves(cast), strict=True))
    assert matmul_settings(bf16) == matmul_settings(cast)
    with pytest.raises(ValueError, match="got float16"):
        sam_jax.load_sam(tmp_path / "sam2", dtype="float16")

    ious = bf16_against_fp32(SAM2ImagePredictor, fp32, bf16, skimage.data.chelsea())
    print(f"SAM 2 sam2_test, chelsea: bf16 vs fp32 mask IoU min {ious.min():.4f} mean {ious.mean():.4f}")
    assert ious.min() >= SAM2_MIN_IOU and ious.mean() >= MEAN_IOU, ious


def test_cli_dtype_option(tmp_path):
    """``sam-jax segment --dtype bfloat16`` runs the bf16 model (its scores, not fp32's);
    ``sam-jax amg`` takes the same option."""
    image = Path(__file__).parents[1] / "examples" / "images" / "chelsea.jpg"
    save_sam(fixture_model("tiny"), tmp_path / "tiny")
    out = tmp_path / "out"
    argv = ["segment", str(image), "--checkpoint", str(tmp_path / "tiny"), "--point", "200,100"]
    assert main([*argv, "--dtype", "bfloat16", "--output", str(out)]) == 0
    got = json.loads((out / "scores.json").read_text())["masks"]
    expected = {}
    for name, model in (("bf16", cast_model(fixture_model("tiny"))), ("fp32", fixture_model("tiny"))):
        predictor = SamPredictor(model)
        predictor.set_image(read_image(image))
        expected[name] = predictor.predict(np.array([[200.0, 100]]), np.array([1]))
    masks, scores, _ = expected["bf16"]
    for i, m in enumerate(got):
        np.testing.assert_array_equal(np.asarray(Image.open(out / m["file"])) > 0, masks[i])
        assert m["score"] == pytest.approx(float(scores[i]), abs=1e-6)
    assert np.max(np.abs(expected["fp32"][1] - scores)) > 1e-5  # bf16 moved them: the option took effect
    parser = build_parser(argparse.ArgumentParser())
    assert parser.parse_args(["--input", "a", "--output", "b", "--dtype", "bfloat16"]).dtype == "bfloat16"
    assert parser.parse_args(["--input", "a", "--output", "b"]).dtype == "float32"
