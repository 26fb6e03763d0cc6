"""Parity of the SAM 2 image model with stored outputs of the reference (``sam2==1.1.0``), no torch.

Fixtures come from ``tests/fixtures/make_sam2_fixtures.py`` (see ``tests/fixtures/README.md``, SAM 2
section): ``sam2_tiny.npz`` (the ``sam2_test`` config, module by module and ``SAM2ImagePredictor``
end to end) and ``sam2_hiera_t.npz`` (full-size SAM 2.1 hiera_tiny end to end on a photo). The
weights are rebuilt here with NumPy (``reference_weights.random_state_dict`` over the image model's
state_dict keys, which the generator checks are the reference's tensors) and converted by
:mod:`sam_jax.convert.sam2_rules`.

fp32, highest matmul precision. Bars: 1e-4 on features, embeddings and low-res logits, 1e-5 on
IoU predictions and object-score logits; thresholded masks identical except where |logit| < 1e-3.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from flax import nnx

from sam_jax.convert import sam2_rules
from sam_jax.core.prompts import drop_absent, make_prompts
from sam_jax.models.sam2.config import get_config
from sam_jax.models.sam2.model import Sam2
from sam_jax.models.sam2.transforms import squash_image
from sam_jax.ops.policy import ExecutionPolicy
from sam_jax.predictors.sam2 import SAM2ImagePredictor

from conftest import WEIGHTS_SEED, fixture_arrays, max_abs
from reference_weights import random_state_dict

TOL = 1e-4
SCORE_TOL = 1e-5  # IoU predictions and object-score logits
LOGIT_DEADBAND = 1e-3  # thresholded masks may differ only where |logit| is below this
MODELS = {"sam2_tiny": "sam2_test", "sam2_hiera_t": "sam2.1_hiera_tiny"}
PHOTOS = {"sam2_tiny": skimage.data.chelsea, "sam2_hiera_t": skimage.data.coffee}
# The strided slices sam2_hiera_t.npz keeps of each feature (see the generator).
FEATURE_STRIDES = {
    "sam2_tiny": {},
    "sam2_hiera_t": {
        "image_embed": np.s_[:, ::16],
        "high_res_feats_0": np.s_[:, ::4, ::4, ::4],
        "high_res_feats_1": np.s_[:, ::8, ::2, ::2],
    },
}


def nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


@functools.cache
def sam2_fixture_model(fixture: str) -> Sam2:
    """Our image model holding the weights ``fixture`` was made with (rebuilt without torch)."""
    cfg = get_config(MODELS[fixture])
    assert int(fixture_arrays(fixture)["meta/weights_seed"]) == WEIGHTS_SEED
    state_dict = random_state_dict(sam2_rules.expected_shapes(cfg), WEIGHTS_SEED)
    return sam2_rules.build_image_model(cfg, sam2_rules.to_params(state_dict, cfg))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_prompts(graphdef, params, features, prompts, multimask_output, image_pe):
    return nnx.merge(graphdef, params).decode_prompts(features, prompts, multimask_output, image_pe)


def decode_with_object_scores(
    predictor: SAM2ImagePredictor, multimask_output: bool, **prompts
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``predictor.predict(**prompts)`` decodes on its one image, with the object-score logits
    it drops: the predictor's own prompt preparation, then ``Sam2.decode_prompts``. Returns the
    unclamped low-res logits ``(P, C, 256, 256)``, IoU ``(P, C)`` and object scores ``(P, 1)``."""
    get = prompts.get
    p = predictor._prep_prompts(0, get("point_coords"), get("point_labels"), get("box"), get("mask_input"), True)
    built = drop_absent(predictor._make_prompts(p, pad_to=p.count))
    features = jax.tree.map(lambda x: x[0], predictor.features)
    out = _decode_prompts(
        predictor.graphdef, predictor.params, features, built, bool(multimask_output), predictor._image_pe
    )
    return tuple(np.asarray(x)[: p.count] for x in out)


@pytest.fixture(scope="module")
def fx():
    return fixture_arrays("sam2_tiny")


@pytest.fixture(scope="module")
def tiny():
    return sam2_fixture_model("sam2_tiny")


def jit_call(fn, *args):
    return nnx.jit(fn)(*args)


# --------------------------------------------------------------------------- modules (sam2_test)


@pytest.mark.parametrize(
    "policy",
    [None, ExecutionPolicy(blocked=True, score_block=100, token_block=7)],
    ids=["xla", "blocked-steps"],
)
def test_trunk_stage_outputs(tiny, fx, policy):
    """All four stages at 160 px (grids 40, 20, 10, 5: padded windows, also under query pooling);
    a blocked policy's loops (query-row blocks, several windows per step, token slices with
    remainders) give the same outputs."""
    args = () if policy is None else (policy,)
    got = jit_call(lambda m, x: m(x, *args), tiny.image_encoder.trunk, nhwc(fx["trunk/in"]))
    assert [g.shape[1] for g in got] == [40, 20, 10, 5]
    for i, g in enumerate(got):
        assert max_abs(nchw(g), fx[f"trunk/out{i}"]) <= TOL, i


def test_neck(tiny, fx):
    xs = [nhwc(fx[f"neck/in{i}"]) for i in range(4)]
    feats, pos = jit_call(lambda m, xs: m(xs), tiny.image_encoder.neck, xs)
    for i in range(4):
        assert max_abs(nchw(feats[i]), fx[f"neck/out{i}"]) <= TOL, i
        assert max_abs(nchw(pos[i]), fx[f"neck/pos{i}"]) <= 1e-6, i


def test_squash_and_normalise_is_sam2_transforms(tiny, fx):
    cfg = tiny.config
    x = (squash_image(skimage.data.chelsea(), cfg.image_size) - np.float32(cfg.pixel_mean)) / np.float32(cfg.pixel_std)
    assert max_abs(x[None], fx["encoder/in"].transpose(0, 2, 3, 1)) <= 2e-6


def test_image_encoder_and_forward_image(tiny, fx):
    out, projected = jit_call(
        lambda m, x: (m.image_encoder(x), m.forward_image(x)["backbone_fpn"]), tiny, nhwc(fx["encoder/in"])
    )
    assert [g.shape[1] for g in out["backbone_fpn"]] == [32, 16, 8]
    for i in range(3):
        assert max_abs(nchw(out["backbone_fpn"][i]), fx[f"encoder/backbone_fpn{i}"]) <= TOL, i
        assert max_abs(nchw(out["vision_pos_enc"][i]), fx[f"encoder/vision_pos_enc{i}"]) <= 1e-6, i
    assert max_abs(nchw(out["vision_features"]), fx["encoder/vision_features"]) <= TOL
    for i in range(2):
        assert max_abs(nchw(projected[i]), fx[f"forward_image/backbone_fpn{i}"]) <= TOL, i


def test_dense_pe(tiny, fx):
    assert max_abs(nchw(tiny.sam_prompt_encoder.get_dense_pe()[None]), fx["dense_pe"]) <= 1e-6


@pytest.mark.parametrize("case", ["points", "corners", "box", "points_box", "mask", "points_mask"])
def test_prompt_encoder(tiny, fx, case):
    """Sparse tokens (the valid ones, in order) and dense embeddings; ``corners`` is a box as the
    predictor passes it (points labelled 2 and 3 ahead of the clicks, padding point appended)."""
    g = f"pe/{case}/"
    masks = fx.get(g + "masks")
    prompts = make_prompts(
        fx.get(g + "coords"),
        fx.get(g + "labels"),
        fx.get(g + "boxes"),
        None if masks is None else masks[:, 0],
        num_prompts=2,
        mask_size=tiny.config.prompt_encoder.mask_input_size,
        num_slots=8,  # more slots than needed: padding must not show
    )
    sparse, valid, dense = jit_call(lambda m, p: m(*p), tiny.sam_prompt_encoder, prompts)
    sparse, valid = np.asarray(sparse), np.asarray(valid)
    got = np.stack([s[v] for s, v in zip(sparse, valid, strict=True)])
    assert max_abs(got, fx[g + "sparse"]) <= TOL
    dense = np.broadcast_to(np.asarray(dense), (2, *dense.shape[1:]))
    assert max_abs(nchw(dense), fx[g + "dense"]) <= TOL


@pytest.mark.parametrize("case", ["multi", "single", "stable"])
def test_mask_decoder(tiny, fx, case):
    """masks, IoU (sigmoid), ``sam_tokens_out`` and object-score logits; one image and its high-res
    levels shared by 4 prompts. ``single`` at the default stability threshold (every prompt falls
    back to its best multimask output), ``stable`` with a threshold between the prompts' scores."""
    dec = tiny.sam_mask_decoder
    base = dec.cfg
    if case == "stable":
        dec.cfg = dataclasses.replace(base, dynamic_multimask_stability_thresh=float(fx["decoder/stable/thresh"]))
    try:
        got = jit_call(
            lambda d, image, pe, sparse, dense, s0, s1: d(image, pe, sparse, dense, case == "multi", (s0, s1)),
            dec,
            nhwc(fx["decoder/image"]),
            nhwc(fx["dense_pe"]),
            jnp.asarray(fx["decoder/sparse"]),
            nhwc(fx["decoder/dense"]),
            nhwc(fx["decoder/s0"]),
            nhwc(fx["decoder/s1"]),
        )
    finally:  # the model is shared by the module's tests
        dec.cfg = base
    masks, iou, tokens, score = got
    g = f"decoder/{case}/"
    assert max_abs(masks, fx[g + "masks"]) <= TOL
    assert max_abs(iou, fx[g + "iou"]) <= SCORE_TOL
    assert max_abs(tokens, fx[g + "tokens"]) <= TOL
    assert max_abs(score, fx[g + "object_score"]) <= SCORE_TOL
    if case == "stable":  # both branches: some prompts keep token 0's mask, others fall back
        fallback = [np.array_equal(fx[g + "masks"][i], fx["decoder/single/masks"][i]) for i in range(4)]
        assert any(fallback) and not all(fallback), fallback


# --------------------------------------------------------------------------- SAM2ImagePredictor


def unpack(c: dict, key: str) -> np.ndarray:
    shape = tuple(c[f"{key}_shape"])
    return np.unpackbits(c[f"{key}_packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def fixture_cases(fx: dict) -> dict[str, dict]:
    """``{case: {name: array}}`` of the ``e2e/<case>/`` entries."""
    cases: dict[str, dict] = {}
    for key, value in fx.items():
        parts = key.split("/")
        if parts[0] == "e2e" and len(parts) == 3:
            cases.setdefault(parts[1], {})[parts[2]] = value
    return cases


@pytest.fixture(scope="module", params=list(MODELS))
def e2e(request):
    name = request.param
    predictor = SAM2ImagePredictor(sam2_fixture_model(name))
    predictor.set_image(PHOTOS[name]())
    return name, fixture_arrays(name), predictor


def test_e2e_features(e2e):
    name, fx, predictor = e2e
    assert tuple(fx["e2e/image_shape"]) == PHOTOS[name]().shape
    errors = {}
    for key, sl in {"image_embed": np.s_[:], **FEATURE_STRIDES[name]}.items():
        got = nchw(np.asarray(predictor.features[key][:1]))[sl]
        errors[key] = max_abs(got, fx[f"e2e/{key}"])
    for level in range(2):
        key = f"high_res_feats_{level}"
        if key not in FEATURE_STRIDES[name]:
            errors[key] = max_abs(nchw(np.asarray(predictor.features[key][:1])), fx[f"e2e/{key}"])
    assert max(errors.values()) <= TOL, errors


def test_e2e_prompts(e2e):
    name, fx, predictor = e2e
    errors = {}
    for case, c in fixture_cases(fx).items():
        prompts = {k: c[k] for k in ("point_coords", "point_labels", "box", "mask_input") if k in c}
        multimask = bool(c["multimask_output"])
        logits, iou, low_res = predictor.predict(**prompts, multimask_output=multimask, return_logits=True)
        _, _, score = decode_with_object_scores(predictor, multimask, **prompts)
        err = {"iou": max_abs(iou, c["iou"]), "object_score": max_abs(score.reshape(-1), c["object_score"].ravel())}
        if "low_res" in c:
            err["low_res"] = max_abs(low_res, c["low_res"])
        errors[case] = err
        assert err["iou"] <= SCORE_TOL and err["object_score"] <= SCORE_TOL, (case, err)
        assert err.get("low_res", 0.0) <= TOL, (case, err)
        if c["return_logits"]:
            assert max_abs(logits, c["masks"]) <= TOL, case
            continue
        masks, _, _ = predictor.predict(**prompts, multimask_output=multimask)
        assert np.array_equal(masks, logits > 0.0), case
        differ = masks.astype(bool) != unpack(c, "masks")
        assert not np.any(differ & (np.abs(logits) >= LOGIT_DEADBAND)), (case, int(differ.sum()))
    print(name, {case: {k: f"{v:.1e}" for k, v in e.items()} for case, e in errors.items()})
