"""Live parity of the SAM 2 image model against the installed reference (``sam2==1.1.0``).

Every parameter and buffer of the reference is redrawn (:func:`sam2_reference.randomize_`), converted
with :mod:`sam_jax.convert.sam2_rules` and compared module by module: mostly at the ``sam2_test``
config (128 px), plus one full-size SAM 2.1 hiera_tiny image encoder at 1024.

fp32, highest matmul precision. Bars: 1e-5 on module outputs at the test config, 1e-4 on full-size
features.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sam2")
import torch
import torch.nn.functional as F
from flax import nnx
from sam2.modeling.position_encoding import PositionEmbeddingSine as RefPositionEmbeddingSine

from sam_jax.convert import sam2_rules
from sam_jax.models.layers import cubic_resize_matrix
from sam_jax.models.sam.prompt_encoder import PromptEncoder
from sam_jax.models.sam2.config import FpnNeckConfig, Sam2Config, get_config
from sam_jax.models.sam2.image_encoder import ImageEncoder
from sam_jax.models.sam2.neck import FpnNeck
from sam_jax.models.sam2.position_encoding import sine_position_encoding
from sam_jax.ops.policy import ExecutionPolicy

import sam2_reference as ref_lib

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)

TOL = 1e-5
FULL_TOL = 1e-4
OUTPUTS = ("masks", "iou_pred", "sam_tokens_out", "object_score_logits")


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def jit_call(fn, *args):
    """``fn(*args)`` under ``nnx.jit`` (op-by-op dispatch compiles every op on its own: far slower)."""
    return nnx.jit(fn)(*args)


def pair(cfg: Sam2Config, seed: int = 0):
    """``(reference SAM2Base, our image model)`` of ``cfg`` holding the same random weights."""
    ref = ref_lib.randomize_(ref_lib.build_from_config(cfg), seed)
    assert ref_lib.count_constant(ref) == 0
    params = sam2_rules.to_params(ref_lib.state_dict_numpy(ref), cfg, source="reference")
    return ref, sam2_rules.build_image_model(cfg, params)


@pytest.fixture(scope="module")
def small():
    return pair(get_config("sam2_test"))


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 64), (14, 256), (4, 32), (7, 7), (10, 3), (16, 9)])
def test_cubic_resize_matrix_is_torch_bicubic(n_in, n_out):
    x = np.random.default_rng(n_in).standard_normal((1, 1, n_in, n_in + 1))
    want = F.interpolate(torch.from_numpy(x), size=(n_out, n_out + 2), mode="bicubic").numpy()[0, 0]
    got = cubic_resize_matrix(n_in, n_out) @ x[0, 0] @ cubic_resize_matrix(n_in + 1, n_out + 2).T
    assert max_abs(got, want) <= 1e-12


@pytest.mark.parametrize(("h", "w", "feats"), [(8, 8, 32), (5, 7, 32), (64, 64, 256), (256, 256, 256)])
def test_sine_position_encoding(h, w, feats):
    want = RefPositionEmbeddingSine(feats)(torch.zeros(1, 1, h, w)).numpy()
    assert max_abs(nchw(sine_position_encoding(h, w, feats)[None]), want) <= 1e-6


# --------------------------------------------------------------------------- image encoder


@torch.no_grad()
def test_trunk_on_odd_grids(small):
    """All four stage outputs at 160 px: stage grids 40, 20, 10, 5, so windows pad on odd grids,
    also after query pooling (128 px is covered by :func:`test_image_model_end_to_end`)."""
    ref, ours = small
    x = np.random.default_rng(160).standard_normal((2, 160, 160, 3), dtype=np.float32)
    want = ref.image_encoder.trunk(t(nchw(x)))
    got = jit_call(lambda m, x: m(x), ours.image_encoder.trunk, jnp.asarray(x))
    assert [g.shape[1] for g in got] == [40, 20, 10, 5]
    for level, (g, w) in enumerate(zip(got, want, strict=True)):
        assert max_abs(nchw(g), w.numpy()) <= TOL, level


@torch.no_grad()
@pytest.mark.parametrize(("score_block", "token_block"), [(100, 7), (1500, 64)])
def test_trunk_in_cache_sized_steps(small, score_block, token_block):
    """A blocked policy's loops (query-row blocks of global and pooled attention, several windows per
    step, token slices; sizes that leave remainders) give the reference's trunk outputs."""
    ref, ours = small
    x = np.random.default_rng(161).standard_normal((1, 160, 160, 3), dtype=np.float32)
    want = ref.image_encoder.trunk(t(nchw(x)))
    policy = ExecutionPolicy(blocked=True, score_block=score_block, token_block=token_block)
    got = jit_call(lambda m, x: m(x, policy), ours.image_encoder.trunk, jnp.asarray(x))
    for level, (g, w) in enumerate(zip(got, want, strict=True)):
        assert max_abs(nchw(g), w.numpy()) <= TOL, level


@torch.no_grad()
@pytest.mark.parametrize(
    "neck_cfg",
    [
        FpnNeckConfig(d_model=32, backbone_channel_list=(128, 64, 32, 16), pos_num_pos_feats=32),
        FpnNeckConfig(
            d_model=32,
            backbone_channel_list=(128, 64, 32, 16),
            pos_num_pos_feats=32,
            fpn_interp_model="bilinear",
            fuse_type="avg",
            fpn_top_down_levels=(0, 1, 2, 3),
        ),
    ],
    ids=["nearest-sum-23", "bilinear-avg-all"],
)
def test_neck(neck_cfg):
    ref = ref_lib.randomize_(ref_lib.build_neck(neck_cfg))
    ours = FpnNeck(neck_cfg, rngs=nnx.Rngs(0))
    sd = ref_lib.state_dict_numpy(ref)
    for j, conv in enumerate(ours.convs):
        conv.conv.kernel[...] = jnp.asarray(sd[f"convs.{j}.conv.weight"].transpose(2, 3, 1, 0))
        conv.conv.bias[...] = jnp.asarray(sd[f"convs.{j}.conv.bias"])
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 32 // 2**i, 32 // 2**i, 16 * 2**i), dtype=np.float32) for i in range(4)]
    want_feats, want_pos = ref([t(nchw(x)) for x in xs])
    got_feats, got_pos = jit_call(lambda m, xs: m(xs), ours, [jnp.asarray(x) for x in xs])
    for level in range(4):
        assert max_abs(nchw(got_feats[level]), want_feats[level].numpy()) <= TOL, level
        assert max_abs(nchw(got_pos[level]), want_pos[level].numpy()) <= 1e-6, level


@torch.no_grad()
def test_full_size_hiera_tiny_image_encoder_at_1024():
    """The one full-size case: SAM 2.1 hiera_tiny's image encoder (trunk + neck) at 1024 px."""
    cfg = get_config("sam2.1_hiera_tiny")
    ref = ref_lib.randomize_(ref_lib.build_image_encoder(cfg.image_encoder), seed=1)
    sd = {f"image_encoder.{k}": v for k, v in ref_lib.state_dict_numpy(ref).items()}
    params = sam2_rules.to_params(sd, cfg, source="reference", parts=("image_encoder",))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ImageEncoder(cfg.image_encoder, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params["image_encoder"]))
    ours = nnx.merge(graphdef, state)
    x = np.random.default_rng(7).standard_normal((1, 1024, 1024, 3), dtype=np.float32)
    want = ref(t(nchw(x)))
    got = nnx.jit(lambda m, x: m(x))(ours, jnp.asarray(x))
    errors = [max_abs(nchw(g), w.numpy()) for g, w in zip(got["backbone_fpn"], want["backbone_fpn"], strict=True)]
    assert [g.shape[1] for g in got["backbone_fpn"]] == [256, 128, 64]
    assert max(errors) <= FULL_TOL, errors
    assert max_abs(nchw(got["vision_features"]), want["vision_features"].numpy()) <= FULL_TOL


# --------------------------------------------------------------------------- prompt encoder


def _prompts(s: int, p: int, n: int, m: int, seed: int = 8):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(-0.1 * s, 1.1 * s, (p, n, 2)).astype(np.float32)
    labels = rng.integers(-1, 2, (p, n)).astype(np.int32)
    x0 = rng.uniform(0, s / 2, (p, 2))
    boxes = np.concatenate([x0, x0 + rng.uniform(1, s / 2, (p, 2))], 1).astype(np.float32)
    masks = rng.standard_normal((p, m, m), dtype=np.float32)
    return coords, labels, boxes, masks


@torch.no_grad()
def test_prompt_encoder_is_sam1s(small):
    """SAM 1's PromptEncoder gives sam2's sparse and dense embeddings for points (labels -1/0/1,
    with the padding point sam2 appends when there is no box), boxes, masks and no prompt."""
    ref, ours = small
    pe_ref, pe = ref.sam_prompt_encoder, ours.sam_prompt_encoder
    assert isinstance(pe, PromptEncoder)
    cfg = pe.cfg
    p, n = 3, 4
    coords, labels, boxes, masks = _prompts(cfg.input_image_size, p, n, cfg.mask_input_size)
    assert (
        max_abs(jit_call(lambda m: m.get_dense_pe(), pe), pe_ref.get_dense_pe()[0].numpy().transpose(1, 2, 0)) <= 1e-6
    )
    pad_c = np.concatenate([coords, np.zeros((p, 1, 2), np.float32)], 1)
    pad_l = np.concatenate([labels, -np.ones((p, 1), np.int32)], 1)
    ones = jnp.ones((p,), bool)
    for use_points, use_box, use_mask in [(1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)]:
        case = (use_points, use_box, use_mask)
        sparse_r, dense_r = pe_ref(
            (t(coords), t(labels)) if use_points else None,
            t(boxes) if use_box else None,
            t(masks[:, None]) if use_mask else None,
        )
        c, lab = (coords, labels) if use_box else (pad_c, pad_l)
        if not use_points:
            c, lab = c[:, :0], lab[:, :0]
        sparse, valid, dense = jit_call(
            lambda m, *a: m(*a),
            pe,
            jnp.asarray(c),
            jnp.asarray(lab),
            jnp.ones(lab.shape, bool),
            jnp.asarray(boxes) if use_box else None,
            ones if use_box else None,
            jnp.asarray(masks) if use_mask else None,
            ones if use_mask else None,
        )
        if not (use_points or use_box or use_mask):
            dense_r = dense_r.expand(p, -1, -1, -1)  # batch 1 from sam2 with no prompt at all
            sparse_r = sparse_r.expand(p, -1, -1)
        assert bool(valid.all()), case
        assert max_abs(sparse, sparse_r.numpy()) <= TOL, case
        assert max_abs(nchw(jnp.broadcast_to(dense, (p, *dense.shape[1:]))), dense_r.numpy()) <= TOL, case


@torch.no_grad()
def test_prompt_encoder_box_corners_as_points_via_the_box_slot(small):
    """SAM2ImagePredictor and the video predictor pass a box as two points labelled 2 and 3, ahead
    of the clicks, with the padding point appended. SAM 1's point slot knows only labels -1/0/1;
    the same tokens come from its box slot (the decoder does not depend on token order)."""
    ref, ours = small
    pe_ref, pe = ref.sam_prompt_encoder, ours.sam_prompt_encoder
    p = 2
    coords, labels, boxes, _ = _prompts(pe.cfg.input_image_size, p, 2, 4, seed=9)
    labels = np.abs(labels)  # clicks 0/1
    box_pts = boxes.reshape(p, 2, 2)
    ref_c = np.concatenate([box_pts, coords], 1)
    ref_l = np.concatenate([np.tile([[2, 3]], (p, 1)), labels], 1).astype(np.int32)
    sparse_r, _ = pe_ref((t(ref_c), t(ref_l)), None, None)  # appends the padding point (no box)
    c = np.concatenate([coords, np.zeros((p, 1, 2), np.float32)], 1)
    lab = np.concatenate([labels, -np.ones((p, 1), np.int32)], 1)
    args = (jnp.asarray(c), jnp.asarray(lab), jnp.ones(lab.shape, bool), jnp.asarray(boxes), jnp.ones((p,), bool))
    sparse, _, _ = jit_call(lambda m, *a: m(*a, None, None), pe, *args)
    # ours: clicks, padding point, corners; the reference: corners, clicks, padding point.
    assert max_abs(np.asarray(sparse)[:, [3, 4, 0, 1, 2]], sparse_r.numpy()) <= TOL


@torch.no_grad()
def test_prompt_encoder_labels_2_and_3_in_the_point_slot(small):
    ref, ours = small
    pe_ref, pe = ref.sam_prompt_encoder, ours.sam_prompt_encoder
    coords = np.random.default_rng(10).uniform(0, 128, (1, 4, 2)).astype(np.float32)
    labels = np.array([[2, 3, 1, 0]], np.int32)
    sparse_r, _ = pe_ref((t(coords), t(labels)), t(np.zeros((1, 4), np.float32)), None)  # box: no padding point
    got = jit_call(lambda m, c, lab: m.embed_points(c, lab), pe, jnp.asarray(coords), jnp.asarray(labels))
    assert max_abs(got, sparse_r.numpy()[:, :4]) <= TOL


# --------------------------------------------------------------------------- mask decoder


def _decoder_inputs(cfg: Sam2Config, b: int, seed: int):
    d, g = cfg.mask_decoder.transformer_dim, cfg.image_size // cfg.backbone_stride
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((b, g, g, d), dtype=np.float32),
        "sparse": rng.standard_normal((b, 5, d), dtype=np.float32),
        "dense": rng.standard_normal((b, g, g, d), dtype=np.float32),
        "s0": rng.standard_normal((b, 4 * g, 4 * g, d // 8), dtype=np.float32),
        "s1": rng.standard_normal((b, 2 * g, 2 * g, d // 4), dtype=np.float32),
    }


def _run_decoders(ref, ours, inputs, repeat_image: bool = False) -> dict[bool, tuple[list, list]]:
    """``{multimask_output: (ours, reference)}``: both settings from one compilation of ours."""
    hr = ours.sam_mask_decoder.cfg.use_high_res_features
    image = inputs["image"][:1] if repeat_image else inputs["image"]
    s0, s1 = (inputs["s0"][:1], inputs["s1"][:1]) if repeat_image else (inputs["s0"], inputs["s1"])
    args = (jnp.asarray(image), jnp.asarray(inputs["sparse"]), jnp.asarray(inputs["dense"]))
    high_res = (jnp.asarray(s0), jnp.asarray(s1))

    def both(model, image, sparse, dense, high_res):
        pe = model.sam_prompt_encoder.get_dense_pe()[None]
        dec = model.sam_mask_decoder
        return {m: dec(image, pe, sparse, dense, m, high_res if hr else None) for m in (True, False)}

    got = jit_call(both, ours, *args, high_res)
    out = {}
    for multimask in (True, False):
        want = ref.sam_mask_decoder(
            image_embeddings=t(nchw(image)),
            image_pe=ref.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=t(inputs["sparse"]),
            dense_prompt_embeddings=t(nchw(inputs["dense"])),
            multimask_output=multimask,
            repeat_image=repeat_image,
            high_res_features=[t(nchw(s0)), t(nchw(s1))] if hr else None,
        )
        out[multimask] = (got[multimask], [w.numpy() for w in want])
    return out


@torch.no_grad()
@pytest.mark.parametrize("repeat_image", [False, True], ids=["batched-image", "repeat-image"])
def test_mask_decoder(small, repeat_image):
    """masks, iou_pred (sigmoid), sam_tokens_out, object_score_logits (MLP head), high-res features,
    multimask and single-mask output; image batch 3 or 1 shared by 3 prompts (``repeat_image``)."""
    ref, ours = small
    for multimask, (got, want) in _run_decoders(ref, ours, _decoder_inputs(get_config("sam2_test"), 3, 11),
                                                repeat_image).items():  # fmt: skip
        assert got[0].shape == (3, 3 if multimask else 1, 32, 32)
        assert got[2].shape == (3, 3 if multimask else 1, 32)
        for name, g, w in zip(OUTPUTS, got, want, strict=True):
            assert max_abs(g, w) <= TOL, (multimask, name)


@torch.no_grad()
@pytest.mark.parametrize(
    "variant",
    [
        {"pred_obj_scores_mlp": False, "use_multimask_token_for_obj_ptr": False},
        {"pred_obj_scores": False, "pred_obj_scores_mlp": False, "use_high_res_features": False,
         "iou_prediction_use_sigmoid": False},
    ],
    ids=["linear-obj-head-single-token-ptr", "no-obj-scores-no-high-res-no-sigmoid"],
)  # fmt: skip
def test_mask_decoder_variants(variant):
    base = get_config("sam2_test")
    top = {"fixed_no_obj_ptr": False} if not variant.get("pred_obj_scores", True) else {}
    cfg = dataclasses.replace(base, mask_decoder=dataclasses.replace(base.mask_decoder, **variant), **top)
    ref, ours = pair(cfg, seed=3)
    for multimask, (got, want) in _run_decoders(ref, ours, _decoder_inputs(cfg, 2, 12)).items():
        for name, g, w in zip(OUTPUTS, got, want, strict=True):
            assert max_abs(g, w) <= TOL, (multimask, name)


@torch.no_grad()
def test_dynamic_multimask_via_stability_takes_both_branches(small):
    """Single-mask output: token 0's mask where it is stable, else the best multimask one. The
    threshold is set between the prompts' stability scores so that both branches are taken."""
    base = get_config("sam2_test")
    ref, ours = small
    inputs = _decoder_inputs(base, 6, 13)
    dec_r = ref.sam_mask_decoder
    masks_r, _, _, _ = dec_r.predict_masks(
        t(nchw(inputs["image"])),
        ref.sam_prompt_encoder.get_dense_pe(),
        t(inputs["sparse"]),
        t(nchw(inputs["dense"])),
        repeat_image=False,
        high_res_features=[t(nchw(inputs["s0"])), t(nchw(inputs["s1"]))],
    )
    # With random weights the scores spread around 0.7 (default delta 0.05); the threshold is put
    # between the middle two, so half the prompts fall back to a multimask output.
    scores = np.sort(dec_r._get_stability_scores(masks_r[:, :1]).numpy().ravel())
    thresh = float(scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    assert scores[0] < thresh < scores[-1], scores
    dec_r.dynamic_multimask_stability_thresh = thresh
    ours.sam_mask_decoder.cfg = dataclasses.replace(base.mask_decoder, dynamic_multimask_stability_thresh=thresh)
    try:
        got, want = _run_decoders(ref, ours, inputs)[False]
    finally:  # the pair is shared by the module's tests
        dec_r.dynamic_multimask_stability_thresh = base.mask_decoder.dynamic_multimask_stability_thresh
        ours.sam_mask_decoder.cfg = base.mask_decoder
    for name, g, w in zip(OUTPUTS, got, want, strict=True):
        assert max_abs(g, w) <= TOL, name
    # Both branches were taken: some outputs are token 0's mask, others a multimask one.
    from_token0 = [max_abs(got[0][i, 0], masks_r[i, 0].numpy()) <= TOL for i in range(6)]
    assert any(from_token0) and not all(from_token0), from_token0


@torch.no_grad()
def test_padded_prompt_tokens_do_not_change_the_result(small):
    """Static shapes: a padded token slot (``token_valid`` False) gives the unpadded reference result."""
    ref, ours = small
    cfg = get_config("sam2_test")
    inputs = _decoder_inputs(cfg, 2, 14)
    want = ref.sam_mask_decoder(
        image_embeddings=t(nchw(inputs["image"])),
        image_pe=ref.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=t(inputs["sparse"]),
        dense_prompt_embeddings=t(nchw(inputs["dense"])),
        multimask_output=True,
        repeat_image=False,
        high_res_features=[t(nchw(inputs["s0"])), t(nchw(inputs["s1"]))],
    )
    padded = np.concatenate([inputs["sparse"], np.full((2, 2, 32), 7.0, np.float32)], 1)
    valid = jnp.asarray(np.r_[[True] * 5, [False] * 2][None].repeat(2, 0))
    got = jit_call(
        lambda d, *a: d(*a[:4], True, a[4], token_valid=a[5]),
        ours.sam_mask_decoder,
        jnp.asarray(inputs["image"]),
        ours.sam_prompt_encoder.get_dense_pe()[None],
        jnp.asarray(padded),
        jnp.asarray(inputs["dense"]),
        (jnp.asarray(inputs["s0"]), jnp.asarray(inputs["s1"])),
        valid,
    )
    for name, g, w in zip(OUTPUTS, got, want, strict=True):
        assert max_abs(g, w.numpy()) <= TOL, name


# --------------------------------------------------------------------------- composed


@torch.no_grad()
def test_image_model_end_to_end(small):
    """Image (batch 2) -> trunk -> neck -> ``forward_image`` (levels 0 and 1 projected by the
    decoder's ``conv_s0``/``conv_s1``) -> prompt encoder (two clicks and the padding point) ->
    decoder with high-res features, as ``SAM2Base._forward_sam_heads`` runs it (before its
    no-object masking). Every intermediate is compared; one compilation for all of it."""
    ref, ours = small
    x = np.random.default_rng(15).standard_normal((2, 128, 128, 3), dtype=np.float32)
    coords = np.array([[[30.0, 40.0], [90.5, 70.0], [0.0, 0.0]], [[3.0, 120.0], [64.0, 64.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1, 0, -1], [1, 1, -1]], np.int32)

    trunk_r = ref.image_encoder.trunk(t(nchw(x)))
    feats_r = ref.forward_image(t(nchw(x)))
    sparse_r, dense_r = ref.sam_prompt_encoder((t(coords[:, :2]), t(labels[:, :2])), None, None)
    want = ref.sam_mask_decoder(
        feats_r["backbone_fpn"][2],
        ref.sam_prompt_encoder.get_dense_pe(),
        sparse_r,
        dense_r,
        multimask_output=True,
        repeat_image=False,
        high_res_features=feats_r["backbone_fpn"][:2],
    )

    def ours_fn(model, image, coords, labels):
        trunk = model.image_encoder.trunk(image)
        feats = model.image_encoder(image)
        s0, s1, s2 = feats["backbone_fpn"]
        dec, pe = model.sam_mask_decoder, model.sam_prompt_encoder
        high_res = (dec.conv_s0(s0), dec.conv_s1(s1))
        sparse, valid, dense = pe(coords, labels, labels > -2, None, None, None, None)
        return trunk, feats, high_res, dec(s2, pe.get_dense_pe()[None], sparse, dense, True, high_res, valid)

    trunk, feats, high_res, got = jit_call(ours_fn, ours, jnp.asarray(x), jnp.asarray(coords), jnp.asarray(labels))
    assert [g.shape[1] for g in trunk] == [32, 16, 8, 4]
    for level, (g, w) in enumerate(zip(trunk, trunk_r, strict=True)):
        assert max_abs(nchw(g), w.numpy()) <= TOL, ("trunk", level)
    assert max_abs(nchw(feats["vision_features"]), feats_r["vision_features"].numpy()) <= TOL
    for level, g in enumerate((*high_res, feats["backbone_fpn"][2])):
        assert max_abs(nchw(g), feats_r["backbone_fpn"][level].numpy()) <= TOL, ("backbone_fpn", level)
    for level, g in enumerate(feats["vision_pos_enc"]):
        assert max_abs(nchw(g), feats_r["vision_pos_enc"][level].numpy()) <= 1e-6, ("vision_pos_enc", level)
    for name, g, w in zip(OUTPUTS, got, want, strict=True):
        assert max_abs(g, w.numpy()) <= TOL, name
