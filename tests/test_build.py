"""Model building: the reference-style registry, load_sam without torch, strict params."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest
import skimage.data
from flax import nnx

import sam_jax
from sam_jax.build import build_sam, save_sam
from sam_jax.core.image import encode
from sam_jax.predictors.sam import SamPredictor

from conftest import fixture_model


def _leaves(model):
    return jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(model)))


def test_registry_loads_a_checkpoint_and_checks_its_type(tmp_path):
    model = fixture_model("tiny")
    save_sam(model, tmp_path / "tiny")
    loaded = sam_jax.load_sam(tmp_path / "tiny")
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(model), _leaves(loaded), strict=True))
    with pytest.raises(ValueError, match="holds SAM tiny, not vit_b"):
        sam_jax.sam_model_registry["vit_b"](checkpoint=tmp_path / "tiny")
    with pytest.raises(FileNotFoundError, match="not a sam_jax checkpoint"):
        sam_jax.load_sam(tmp_path)
    with pytest.raises(FileExistsError, match="force=True"):
        save_sam(model, tmp_path / "tiny")


def test_registry_without_checkpoint_is_random_init_of_that_size():
    assert set(sam_jax.sam_model_registry) == {"default", "vit_h", "vit_l", "vit_b"}
    shapes = jax.eval_shape(lambda: nnx.state(sam_jax.sam_model_registry["vit_b"]()))
    assert shapes["image_encoder"]["pos_embed"].shape == (1, 64, 64, 768)


def test_params_are_strict():
    params = nnx.to_pure_dict(nnx.state(fixture_model("tiny")))
    params["image_encoder"]["pos_embed"] = np.zeros((1, 3, 3, 48), np.float32)
    with pytest.raises(ValueError, match="wrong shape"):
        build_sam("tiny", params=params)
    del params["image_encoder"]["pos_embed"]
    with pytest.raises(ValueError, match="missing"):
        build_sam("tiny", params=params)


def test_load_sam_imports_no_torch(tmp_path):
    save_sam(fixture_model("tiny"), tmp_path / "m")
    code = (
        "import sys, sam_jax, numpy as np; m = sam_jax.load_sam(sys.argv[1]); p = sam_jax.SamPredictor(m);"
        "p.set_image(np.zeros((20, 30, 3), np.uint8)); p.predict(np.array([[1.0, 2.0]]), np.array([1]));"
        "assert 'torch' not in sys.modules and 'convert' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_images_of_any_size_share_one_encoder_program():
    predictor = SamPredictor(fixture_model("tiny"))
    predictor.set_image(skimage.data.chelsea())
    before = encode._cache_size()
    for image in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.camera()[:100, :37]):
        predictor.set_image(image)
    assert encode._cache_size() == before
