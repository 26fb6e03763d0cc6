"""Live parity: rebuild the PyTorch reference (the ``reference`` extra, installed in CI) and
compare every module directly, at the tiny config and at full vit_b size.

fp32, highest matmul precision. Bars: 1e-4 on activations/logits, 1e-5 on IoU predictions.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sam_jax import inference

from conftest import fixture_model, max_abs
from reference_model import build_reference

TOL = 1e-4
IOU_TOL = 1e-5
torch.set_num_threads(2)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module", params=["tiny", "vit_b"])
def pair(request):
    name = request.param
    return name, build_reference(name), fixture_model(name)


@torch.no_grad()
def test_blocks_windowed_and_global(pair):
    name, ref, ours = pair
    cfg = ours.config.image_encoder
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cfg.grid_size, cfg.grid_size, cfg.embed_dim), dtype=np.float32)
    windowed = next(i for i in range(cfg.depth) if i not in cfg.global_attn_indexes)
    for i in (windowed, cfg.global_attn_indexes[0]):
        err = max_abs(ours.image_encoder.blocks[i](jnp.asarray(x)), ref.image_encoder.blocks[i](t(x)).numpy())
        assert err <= TOL, (name, i, err)


@torch.no_grad()
def test_global_block_other_input_size_interpolates_rel_pos(pair):
    """A global block on a grid other than the table's resizes rel-pos linearly (get_rel_pos)."""
    _, ref, ours = pair
    cfg = ours.config.image_encoder
    x = np.random.default_rng(1).standard_normal((1, 7, 9, cfg.embed_dim), dtype=np.float32)
    i = cfg.global_attn_indexes[0]
    assert max_abs(ours.image_encoder.blocks[i](jnp.asarray(x)), ref.image_encoder.blocks[i](t(x)).numpy()) <= TOL


@torch.no_grad()
def test_neck(pair):
    _, ref, ours = pair
    cfg = ours.config.image_encoder
    x = np.random.default_rng(2).standard_normal((1, cfg.grid_size, cfg.grid_size, cfg.embed_dim), dtype=np.float32)
    y = jnp.asarray(x)
    for layer in ours.image_encoder.neck:
        y = layer(y)
    assert max_abs(nchw(y), ref.image_encoder.neck(t(x.transpose(0, 3, 1, 2))).numpy()) <= TOL


@torch.no_grad()
def test_prompt_encoder_and_decoder_every_prompt_kind(pair):
    name, ref, ours = pair
    pcfg = ours.config.prompt_encoder
    s, g, m = pcfg.input_image_size, pcfg.image_embedding_size, pcfg.mask_input_size
    rng = np.random.default_rng(3)
    p = 3
    coords = rng.uniform(-0.1 * s, 1.1 * s, (p, 4, 2)).astype(np.float32)
    labels = rng.integers(-1, 2, (p, 4)).astype(np.int32)
    x0 = rng.uniform(0, s / 2, (p, 2))
    boxes = np.concatenate([x0, x0 + rng.uniform(1, s / 2, (p, 2))], 1).astype(np.float32)
    masks = rng.standard_normal((p, m, m), dtype=np.float32)
    emb = rng.standard_normal((g, g, pcfg.embed_dim), dtype=np.float32)
    for use_points, use_box, use_mask in [(1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)]:
        case = (name, use_points, use_box, use_mask)
        sparse_r, dense_r = ref.prompt_encoder(
            (t(coords), t(labels)) if use_points else None,
            t(boxes) if use_box else None,
            t(masks[:, None]) if use_mask else None,
        )
        if not (use_points or use_box or use_mask):  # the reference then has batch 1
            sparse_r, dense_r = sparse_r.expand(p, -1, -1), dense_r.expand(p, -1, -1, -1)
        prompts = inference.make_prompts(
            coords if use_points else None,
            labels if use_points else None,
            boxes if use_box else None,
            masks if use_mask else None,
            num_prompts=p,
            mask_size=m,
        )
        for multimask in (True, False):
            masks_r, iou_r = ref.mask_decoder(
                t(emb.transpose(2, 0, 1)[None]), ref.prompt_encoder.get_dense_pe(), sparse_r, dense_r, multimask
            )
            masks_o, iou_o = inference.decode(*inference.split(ours), jnp.asarray(emb), prompts, multimask)
            assert max_abs(masks_o, masks_r.numpy()) <= TOL, case
            assert max_abs(iou_o, iou_r.numpy()) <= IOU_TOL, case
        sparse, valid, dense = ours.prompt_encoder(*map(jnp.asarray, prompts))
        got = np.stack([a[v] for a, v in zip(np.asarray(sparse), np.asarray(valid), strict=True)])
        assert max_abs(got, sparse_r.detach().numpy()) <= TOL, case
        assert max_abs(nchw(dense), dense_r.detach().numpy()) <= TOL, case


@torch.no_grad()
def test_whole_image_encoder_on_noise_batch():
    """Batch of 2 through the tiny encoder (vit_b's encoder is compared on a photo in test_parity_fixtures)."""
    ref, ours = build_reference("tiny"), fixture_model("tiny")
    s = ours.config.img_size
    x = np.random.default_rng(4).standard_normal((2, s, s, 3), dtype=np.float32)
    assert (
        max_abs(nchw(ours.image_encoder(jnp.asarray(x))), ref.image_encoder(t(x.transpose(0, 3, 1, 2))).numpy()) <= TOL
    )
