"""The decoder's faster evaluation orders compute what the reference's order computes.

Attention with the image-side projections moved onto the tokens, an image shared by every prompt
(batch 1), transposed convolutions as sub-pixel matmuls, prompts decoded in chunks, absent box and
mask prompts dropped from the program, and banded mask resizing: each is checked against the
direct form on random inputs (the parity tests check the composed model against the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sam_jax import inference
from sam_jax.amg.generator import _decode_needed
from sam_jax.core.decode import in_chunks
from sam_jax.core.resize import postprocess_matrices
from sam_jax.core.transforms import preprocess_shape
from sam_jax.models.layers import sequential
from sam_jax.models.sam.config import MaskDecoderConfig
from sam_jax.models.sam.mask_decoder import MaskDecoder
from sam_jax.models.sam.transformer import Attention, TwoWayTransformer
from sam_jax.ops import cross_attention as cross
from sam_jax.ops.policy import ExecutionPolicy
from sam_jax.runtime import sharding

from conftest import max_abs, postprocess_masks

TOL = 1e-5
# vit_b's decoder attention (256 wide, 8 heads, inner 128) at a smaller grid.
DIM, HEADS, RATE, N = 256, 8, 2, 100


def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.fixture(scope="module")
def attention() -> Attention:
    att = Attention(DIM, HEADS, RATE, rngs=nnx.Rngs(0))
    for i, proj in enumerate((att.q_proj, att.k_proj, att.v_proj, att.out_proj)):
        proj.bias[...] = normal(10 + i, proj.bias.shape, 0.1)  # nnx initialises biases to zero
    return att


@pytest.mark.parametrize("image_batch", [1, 3])
@pytest.mark.parametrize("factored", [False, True])
def test_tokens_to_image(attention, image_batch, factored):
    q = normal(0, (3, 7, DIM))
    k, v = normal(1, (image_batch, N, DIM)), normal(2, (image_batch, N, DIM))
    want = attention(q, jnp.broadcast_to(k, (3, N, DIM)), jnp.broadcast_to(v, (3, N, DIM)))
    assert max_abs(cross.tokens_to_image(attention, q, k, v, factored=factored), want) <= TOL


@pytest.mark.parametrize("image_batch", [1, 3])
@pytest.mark.parametrize("factored", [False, True])
def test_image_to_tokens(attention, image_batch, factored):
    q = normal(0, (image_batch, N, DIM))
    k, v = normal(1, (3, 7, DIM)), normal(2, (3, 7, DIM))
    valid = jnp.array([[True] * 7, [True] * 5 + [False] * 2, [True, False] * 3 + [True]])
    want = attention(jnp.broadcast_to(q, (3, N, DIM)), k, v, valid)
    assert max_abs(cross.image_to_tokens(attention, q, k, v, valid, factored=factored), want) <= TOL


def test_cost_model_picks_factored_only_for_few_tokens(attention):
    # inner 128 against 8 heads x T tokens: factored pays off below T = 16.
    assert cross.factored_is_cheaper(attention, 4096, 7, 3, 3)
    assert not cross.factored_is_cheaper(attention, 4096, 20, 3, 3)
    # An image shared by many prompts is projected once instead.
    assert not cross.factored_is_cheaper(attention, 4096, 7, 1, 64)


def test_transformer_with_shared_image():
    cfg = MaskDecoderConfig(transformer_dim=64, transformer_mlp_dim=128, transformer_num_heads=4)
    transformer = TwoWayTransformer(cfg, rngs=nnx.Rngs(0))
    image, pe, tokens = normal(0, (1, 6, 6, 64)), normal(1, (1, 6, 6, 64)), normal(2, (4, 5, 64))
    valid = jnp.ones((4, 5), bool).at[1, 3:].set(False)
    q1, k1 = transformer(image, pe, tokens, valid)
    q2, k2 = transformer(jnp.broadcast_to(image, (4, 6, 6, 64)), pe, tokens, valid)
    assert k1.shape == k2.shape == (4, 36, 64)
    assert max_abs(q1, q2) <= TOL and max_abs(k1, k2) <= TOL


def test_upscaling_as_sub_pixel_matmuls():
    decoder = MaskDecoder(MaskDecoderConfig(transformer_dim=32, transformer_num_heads=4), rngs=nnx.Rngs(0))
    for layer in (decoder.output_upscaling[0], decoder.output_upscaling[3]):
        layer.bias[...] = normal(5, layer.bias.shape, 0.1)
    x = normal(0, (2, 5, 6, 32))
    want = sequential(decoder.output_upscaling, x)  # lax's transposed convolution
    blocks = decoder._upscale_blocks(x)  # (P, h, w, a, b, a', b', c) -> pixel (4i + 2a + a', 4j + 2b + b')
    got = blocks.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(want.shape)
    assert max_abs(got, want) <= TOL


def test_chunked_and_compact_decoding_match(tiny_model):
    graphdef, params = inference.split(tiny_model)
    pcfg = tiny_model.config.prompt_encoder
    g = pcfg.image_embedding_size
    embedding = normal(0, (g, g, pcfg.embed_dim))
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, pcfg.input_image_size, (8, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (8, 2))
    full = inference.make_prompts(coords, labels, None, None, num_prompts=8, mask_size=pcfg.mask_input_size)
    compact = inference.drop_absent(full)
    assert compact.boxes is None and compact.mask_input is None
    want = inference.decode(graphdef, params, embedding, full, True)
    pe = inference.dense_pe(graphdef, params)
    for prompts, chunk in ((compact, None), (compact, 2), (full, 4)):
        policy = ExecutionPolicy(prompts_per_device=chunk)
        got = inference.decode(graphdef, params, embedding, prompts, True, pe, policy)
        assert max_abs(got[0], want[0]) <= 1e-4 and max_abs(got[1], want[1]) <= 1e-5, chunk
    # The chunk must divide the prompts: a policy only ever picks a divisor.
    assert ExecutionPolicy(prompts_per_device=3).prompt_chunk(8) == 2
    with pytest.raises(ValueError, match="divide"):
        in_chunks(lambda p: p, compact, 3)


def test_prompt_chunk_sizes():
    cpu = lambda devices: ExecutionPolicy.for_platform("cpu", devices)
    assert cpu(1).prompt_chunk(64) == 4
    assert cpu(8).prompt_chunk(64) == 32  # 4 per device, split over devices
    assert cpu(1).prompt_chunk(50) == 2
    assert cpu(1).prompt_chunk(4) is None  # one step holds them all
    assert ExecutionPolicy.for_platform("gpu").prompt_chunk(64) is None


def test_banded_postprocess_matches_dense_resize():
    low = normal(0, (2, 3, 64, 64), 3.0)
    rows, cols = postprocess_matrices(64, 256, preprocess_shape(300, 451, 256), (300, 451))
    want = postprocess_masks(low, rows, cols)
    resize = inference.Resize.make(64, 256, (300, 451))
    got = inference.postprocess(low, resize, np.float32(0.0), True)
    assert got.shape == (2, 3, 300, 451)
    assert max_abs(got, want) <= 1e-5
    masks = inference.postprocess(low, resize, np.float32(0.0), False)
    assert masks.dtype == bool and np.array_equal(masks, np.asarray(got) > 0)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_masks_skipped_below_the_iou_floor(tiny_model, per_prompt):
    # AMG passes the predicted-IoU threshold: prompts none of whose masks pass it get zero logits
    # (per prompt with a mesh, per step without); every other prompt's logits are unchanged.
    graphdef, params = inference.split(tiny_model)
    pcfg = tiny_model.config.prompt_encoder
    g = pcfg.image_embedding_size
    embedding = normal(0, (g, g, pcfg.embed_dim))
    coords = np.random.default_rng(2).uniform(0, pcfg.input_image_size, (8, 1, 2)).astype(np.float32)
    prompts = inference.drop_absent(
        inference.make_prompts(coords, np.ones((8, 1)), None, None, num_prompts=8, mask_size=pcfg.mask_input_size)
    )
    pe = inference.dense_pe(graphdef, params)
    policy = ExecutionPolicy(blocked=per_prompt, prompts_per_device=2)  # steps of 2 prompts
    want, iou = inference.decode(graphdef, params, embedding, prompts, True, pe, policy)
    floor = jnp.float32(np.median(np.asarray(iou).max(1)))  # about half the prompts pass
    features = {"image_embed": embedding}
    skip = jax.jit(_decode_needed, static_argnums=(0, 1, 2))
    got, got_iou = skip(graphdef, sharding.data_mesh(), policy, params, features, pe, prompts, floor)
    assert max_abs(got_iou, iou) <= 1e-6
    needed = np.asarray(iou > floor).any(1)
    assert 0 < needed.sum() < 8
    assert max_abs(np.asarray(got)[needed], np.asarray(want)[needed]) <= 1e-5
    steps = needed.reshape(2, 4).any(0)[np.arange(8) % 4]  # step i decodes prompts i and i + 4
    zeroed = ~needed if per_prompt else ~steps
    assert np.all(np.asarray(got)[zeroed] == 0)
    assert per_prompt or np.all(np.abs(np.asarray(got)[steps]).max((1, 2, 3)) > 0)
