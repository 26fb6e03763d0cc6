"""SamPredictor beyond parity: batching, compilation reuse, input handling, devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam_jax import inference
from sam_jax.predictors.sam import SamPredictor

from conftest import fixture_model

ATOL = 1e-5  # batched vs single programs differ only in float summation order


@pytest.fixture(scope="module")
def predictor():
    p = SamPredictor(fixture_model("tiny"))
    p.set_image(skimage.data.chelsea())
    return p


def test_predict_batch_equals_one_at_a_time(predictor):
    boxes = np.array([[10, 20, 200, 180], [100, 50, 400, 290], [0, 0, 450, 299]], np.float32)
    coords = [np.array([[50.0, 60.0]]), np.zeros((0, 2)), np.array([[300.0, 100], [120, 220], [5, 5]])]
    labels = [np.array([1]), np.zeros((0,), int), np.array([1, 0, 1])]
    masks, iou, low = predictor.predict_batch(coords, labels, boxes, multimask_output=True, return_logits=True)
    assert masks.shape == (3, 3, 300, 451) and iou.shape == (3, 3) and low.shape == (3, 3, 40, 40)
    for i in range(3):
        m1, i1, l1 = predictor.predict(
            coords[i] if len(coords[i]) else None,
            labels[i] if len(labels[i]) else None,
            boxes[i],
            return_logits=True,
        )
        np.testing.assert_allclose(masks[i], m1, atol=ATOL)
        np.testing.assert_allclose(iou[i], i1, atol=ATOL)
        np.testing.assert_allclose(low[i], l1, atol=ATOL)


def test_predict_batch_points_only_and_masks(predictor):
    coords = np.array([[[30.0, 40.0], [200, 100]], [[400, 250], [10, 290]]])
    labels = np.array([[1, 0], [1, 1]])
    _, _, low = predictor.predict(coords[0], labels[0], multimask_output=False)
    mask_input = np.stack([low, low])
    masks, iou, _ = predictor.predict_batch(coords, labels, mask_input=mask_input, multimask_output=False)
    for i in range(2):
        m1, i1, _ = predictor.predict(coords[i], labels[i], mask_input=low, multimask_output=False)
        np.testing.assert_allclose(iou[i], i1, atol=ATOL)
        assert masks[i].dtype == bool and (masks[i] != m1).mean() < 1e-4


def test_predict_images_equals_per_image(predictor):
    model = predictor.model
    images = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    prompts = [
        {"point_coords": np.array([[[100.0, 100.0]]]), "point_labels": np.array([[1]])},
        {"boxes": np.array([[50, 60, 300, 400], [0, 0, 511, 511]], np.float32)},
        {"point_coords": [np.array([[10.0, 20], [500, 300]])], "point_labels": [np.array([1, 0])]},
    ]
    batched = SamPredictor(model)
    batched.set_image_batch(images)
    results = batched.predict_images(prompts, return_logits=True)
    single = SamPredictor(model)
    for image, prompt, (masks, iou, low) in zip(images, prompts, results, strict=True):
        single.set_image(image)
        m1, i1, l1 = single.predict_batch(**prompt, return_logits=True)
        assert masks.shape == m1.shape and masks.shape[-2:] == image.shape[:2]
        np.testing.assert_allclose(masks, m1, atol=1e-4)
        np.testing.assert_allclose(iou, i1, atol=ATOL)
        np.testing.assert_allclose(low, l1, atol=1e-4)


def test_points_within_a_bucket_reuse_the_compiled_program(predictor):
    rng = np.random.default_rng(0)
    decode = inference.decoder(predictor.graphdef).decode  # the predictor's compiled decode
    predictor.predict(rng.uniform(0, 300, (3, 2)), np.ones(3))  # warm: 3 points + pad = 4 slots
    before = decode._cache_size()
    for n in (3, 2, 3):  # 3..4 tokens -> bucket 4
        predictor.predict(rng.uniform(0, 300, (n, 2)), rng.integers(0, 2, n))
    assert decode._cache_size() == before
    predictor.predict(rng.uniform(0, 300, (6, 2)), np.ones(6))  # 7 tokens -> bucket 8: one new program
    assert decode._cache_size() == before + 1


def test_image_formats(predictor):
    model = predictor.model
    rgb = skimage.data.astronaut()
    p = SamPredictor(model)
    p.set_image(rgb)
    ref = p.get_image_embedding()
    p.set_image(np.ascontiguousarray(rgb[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(p.get_image_embedding(), ref)
    p.set_image(np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], axis=2))  # RGBA: alpha dropped
    np.testing.assert_array_equal(p.get_image_embedding(), ref)
    gray = skimage.data.camera()
    p.set_image(gray)
    a = p.get_image_embedding()
    p.set_image(np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(a, p.get_image_embedding())
    p.set_image(gray[..., None])
    np.testing.assert_array_equal(a, p.get_image_embedding())


BAD_INPUTS = [
    (dict(point_coords=np.array([[1.0, 2.0]])), ValueError, "given together"),
    (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), ValueError, r"\(N, 2\)"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 1])), ValueError, "shape"),
    (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), ValueError, "finite"),
    (dict(point_coords=np.array([[np.inf, 2.0]]), point_labels=np.array([1])), ValueError, "finite"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([2])), ValueError, r"\(-1, 0, 1\)"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([0.5])), ValueError, "integers"),
    (dict(point_coords=[["a", "b"]], point_labels=[1]), TypeError, "numbers"),
    (dict(box=np.array([1.0, 2.0, 3.0])), ValueError, r"\(4,\)"),
    (dict(box=np.array([10.0, 2.0, 3.0, 5.0])), ValueError, "x2 >= x1"),
    (dict(box=np.array([0.0, 0.0, np.nan, 5.0])), ValueError, "finite"),
    (dict(mask_input=np.zeros((1, 256, 256))), ValueError, r"\(1, 40, 40\)"),
    (dict(mask_input=np.zeros((40, 40))), ValueError, "mask_input"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_INPUTS)
def test_bad_prompts_raise_clear_errors(predictor, kwargs, error, match):
    with pytest.raises(error, match=match):
        predictor.predict(**kwargs)


BAD_IMAGES = [
    (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
    (np.zeros((10, 10, 2), np.uint8), ValueError, "shape"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
    ([[1, 2, 3]], TypeError, "numpy array"),
    (np.zeros((4, 10, 10, 3), np.uint8), ValueError, "shape"),
]


@pytest.mark.parametrize(("image", "error", "match"), BAD_IMAGES)
def test_bad_images_raise_clear_errors(predictor, image, error, match):
    p = SamPredictor(predictor.model)
    with pytest.raises(error, match=match):
        p.set_image(image)


def test_bad_usage(predictor):
    p = SamPredictor(predictor.model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(skimage.data.astronaut(), image_format="RGBA")
    with pytest.raises(TypeError, match="Sam model"):
        SamPredictor(object())
    p.set_image_batch([skimage.data.astronaut(), skimage.data.coffee()])
    with pytest.raises(ValueError, match="predict_images"):
        p.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="prompts for 2 images"):
        p.predict_images([{}])
    with pytest.raises(ValueError, match="same batch size"):
        predictor.predict_batch(np.zeros((2, 1, 2)), np.ones((2, 1)), boxes=np.zeros((3, 4)))


def test_points_outside_the_image_are_accepted(predictor):
    masks, iou, _ = predictor.predict(np.array([[-50.0, 1000.0]]), np.array([1]))
    assert masks.shape == (3, 300, 451) and np.isfinite(iou).all()


coord = st.floats(-100, 600, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 5),
    data=st.data(),
    with_box=st.booleans(),
    multimask=st.booleans(),
)
def test_valid_prompts_never_crash(predictor, n, data, with_box, multimask):
    if n == 0 and not with_box:
        with_box = True
    coords = np.array(data.draw(st.lists(st.tuples(coord, coord), min_size=n, max_size=n)), np.float32).reshape(n, 2)
    labels = np.array(data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=n, max_size=n)), np.int32)
    box = None
    if with_box:
        x0, y0 = data.draw(coord), data.draw(coord)
        box = np.array([x0, y0, x0 + data.draw(st.floats(0, 300)), y0 + data.draw(st.floats(0, 300))], np.float32)
    masks, iou, low = predictor.predict(coords if n else None, labels if n else None, box, multimask_output=multimask)
    c = 3 if multimask else 1
    assert masks.shape == (c, 300, 451) and masks.dtype == bool
    assert iou.shape == (c,) and np.isfinite(iou).all() and np.isfinite(low).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    coords=st.lists(st.lists(st.one_of(st.floats(), st.integers(-5, 5)), min_size=0, max_size=3), max_size=3),
    labels=st.lists(st.one_of(st.integers(-3, 3), st.floats()), max_size=4),
)
def test_invalid_point_prompts_raise_documented_errors(predictor, coords, labels):
    try:
        c = np.asarray(coords, dtype=np.float64)
    except ValueError:
        c = None  # ragged
    valid = (
        c is not None
        and c.ndim == 2
        and c.shape[1:] == (2,)
        and np.isfinite(c).all()
        and len(labels) == len(c)
        and all(float(v).is_integer() and v in (-1, 0, 1) for v in labels if np.isfinite(v))
        and all(np.isfinite(v) for v in labels)
    )
    if valid:
        predictor.predict(coords, labels)
    else:
        with pytest.raises((ValueError, TypeError)):
            predictor.predict(coords, labels)


MULTI_DEVICE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, jax, skimage.data
    sys.path.insert(0, "tests")
    from conftest import fixture_model
    from sam_jax.runtime import sharding
    from sam_jax.predictors.sam import SamPredictor
    assert jax.device_count() == 8, jax.devices()
    model = fixture_model("tiny")
    images = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    prompts = [{"boxes": np.array([[10, 20, 200, 180]] * 5, np.float32)},
               {"point_coords": np.array([[[100.0, 100.0]], [[300.0, 30.0]]]), "point_labels": np.ones((2, 1))},
               {"boxes": np.array([[0, 0, 300, 200]], np.float32)}]
    out = {}
    for name, mesh in (("one", sharding.data_mesh(tuple(jax.devices()[:1]))), ("all", sharding.data_mesh())):
        p = SamPredictor(model, mesh=mesh)
        p.set_image_batch(images)
        res = p.predict_images(prompts, return_logits=True)
        p.set_image(images[0])
        batch = p.predict_batch(boxes=np.array([[10, 20, 200, 180]] * 11, np.float32), return_logits=True)
        out[name] = [r[1].tolist() for r in res] + [batch[1].tolist()]
        out[name + "_logits"] = [r[0] for r in res] + [batch[0]]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(out["one_logits"], out["all_logits"]))
    print(json.dumps({"iou_one": out["one"], "iou_all": out["all"], "max_logit_diff": diff}))
    """
)


def test_eight_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for a, b in zip(out["iou_one"], out["iou_all"], strict=True):
        np.testing.assert_allclose(a, b, atol=ATOL)
    assert out["max_logit_diff"] <= 1e-4


def test_compilation_cache_location_and_opt_out(tmp_path):
    code = "from sam_jax.runtime.compile_cache import enable_compilation_cache as e; print(e())"
    env = dict(os.environ, SAM_JAX_CACHE_DIR=str(tmp_path / "cc"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(tmp_path / "cc") and (tmp_path / "cc").is_dir()
    env["SAM_JAX_COMPILATION_CACHE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "None"


def test_mask_resize_cache_is_bounded(predictor, monkeypatch):
    """A job over many photo sizes keeps a bounded number of mask resizes (least recently used out)."""
    from sam_jax.predictors import base

    monkeypatch.setattr(base, "RESIZE_CACHE_SIZE", 3)
    image = skimage.data.astronaut()
    for w in (40, 41, 42, 43, 44):
        predictor.set_image(image[:30, :w])
        predictor.predict(point_coords=np.array([[5.0, 5.0]]), point_labels=np.array([1]))
    assert list(predictor._resizes) == [(30, 42), (30, 43), (30, 44)]
    predictor.set_image(image[:30, :42])  # a hit moves the size to the most recent end
    masks, _, _ = predictor.predict(point_coords=np.array([[5.0, 5.0]]), point_labels=np.array([1]))
    assert masks.shape[1:] == (30, 42) and list(predictor._resizes)[-1] == (30, 42)


def test_image_state_round_trip_restores_without_encoding(predictor):
    """get_image_state / set_image_state: a stored embedding predicts what the live one does."""
    predictor.set_image(skimage.data.coffee()[::4, ::4])
    state = predictor.get_image_state()
    want = predictor.predict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]))
    predictor.reset_image()
    predictor.set_image_state(state)
    got = predictor.predict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    bad = {**state, "features/image_embed": state["features/image_embed"][:-1]}
    with pytest.raises(ValueError, match="does not fit this model"):
        predictor.set_image_state(bad)
