"""SAM 2 / 2.1 registry, shapes and converter strictness, without running a model.

Every registry config is built abstractly (``nnx.eval_shape``) and compared with the reference built
from its yaml on torch's meta device (no memory): the same image-model keys and shapes, the same
parameter count, the same settings. The parameter counts are also pinned, so that they are checked
where the reference is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jax
import numpy as np
import pytest
from flax import nnx

from sam_jax.convert import sam2_rules
from sam_jax.convert.rules import ConversionError
from sam_jax.models.sam2.config import CONFIGS, MODEL_TYPES, Sam2Config, get_config

# Image-model tensors (trunk, neck, prompt encoder incl. its Gaussian-matrix buffer, mask decoder,
# no_mem_embed) of sam2==1.1.0, the same for SAM 2 and 2.1. Whole SAM2Base state_dicts: sam2.1_hiera_tiny
# 38,962,754.
IMAGE_MODEL_SIZES = {
    "tiny": 31_440_977,
    "small": 38_538_833,
    "base_plus": 73_328_657,
    "large": 216_925_121,
}


def _size(name: str) -> str:
    return name.split("_hiera_")[1]


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_image_model_parameter_count(name):
    model = sam2_rules.abstract_image_model(get_config(name))
    assert _count(nnx.state(model)) == IMAGE_MODEL_SIZES[_size(name)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trips_through_json(name):
    cfg = get_config(name)
    assert Sam2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.family == "sam2" and cfg.name == name


def test_unknown_config_names_the_choices():
    with pytest.raises(ValueError, match=re.escape("sam2.1_hiera_tiny")):
        get_config("sam2_hiera_t")


# --------------------------------------------------------------------------- against the reference


def _reference_settings_match(cfg: Sam2Config, ref) -> None:
    """Every setting of ``cfg`` equals what the reference instantiated."""
    trunk, neck, dec, pe = ref.image_encoder.trunk, ref.image_encoder.neck, ref.sam_mask_decoder, ref.sam_prompt_encoder
    t, n, d = cfg.image_encoder.trunk, cfg.image_encoder.neck, cfg.mask_decoder
    assert tuple(trunk.window_spec) == t.window_spec
    assert tuple(trunk.global_att_blocks) == t.global_att_blocks
    assert tuple(trunk.stage_ends) == t.stage_ends
    assert tuple(trunk.q_pool_blocks) == t.q_pool_blocks
    assert tuple(trunk.q_stride) == t.q_stride
    assert tuple(trunk.channel_list) == t.channel_list
    assert tuple(trunk.window_pos_embed_bkg_spatial_size) == t.window_pos_embed_bkg_spatial_size
    blocks = tuple((b.dim, b.dim_out, b.attn.num_heads, b.window_size, b.q_stride is not None) for b in trunk.blocks)
    assert blocks == t.block_specs()
    assert tuple(trunk.blocks[0].mlp.layers[0].weight.shape) == (int(t.embed_dim * t.mlp_ratio), t.embed_dim)
    assert trunk.blocks[0].norm1.eps == t.layer_norm_eps
    proj = trunk.patch_embed.proj
    assert (proj.kernel_size[0], proj.stride[0], proj.padding[0]) == (
        t.patch_kernel_size,
        t.patch_stride,
        t.patch_padding,
    )
    assert ref.image_encoder.scalp == cfg.image_encoder.scalp
    assert neck.d_model == n.d_model and tuple(neck.backbone_channel_list) == n.backbone_channel_list
    assert neck.fpn_interp_model == n.fpn_interp_model and neck.fuse_type == n.fuse_type
    assert tuple(neck.fpn_top_down_levels) == n.fpn_top_down_levels
    pos = neck.position_encoding
    assert 2 * pos.num_pos_feats == n.pos_num_pos_feats and pos.temperature == n.pos_temperature
    assert pos.normalize == n.pos_normalize and pos.scale == (2 * math.pi if n.pos_scale is None else n.pos_scale)
    assert (pe.embed_dim, pe.image_embedding_size, pe.input_image_size) == (
        cfg.prompt_encoder.embed_dim,
        (cfg.prompt_encoder.image_embedding_size,) * 2,
        (cfg.prompt_encoder.input_image_size,) * 2,
    )
    assert pe.mask_downscaling[3].out_channels == cfg.prompt_encoder.mask_in_chans
    assert dec.transformer_dim == d.transformer_dim and dec.num_multimask_outputs == d.num_multimask_outputs
    assert dec.transformer.depth == d.transformer_depth and dec.transformer.num_heads == d.transformer_num_heads
    assert dec.transformer.mlp_dim == d.transformer_mlp_dim
    attn = dec.transformer.layers[0].cross_attn_token_to_image
    assert attn.internal_dim * d.attention_downsample_rate == d.transformer_dim
    assert dec.iou_prediction_head.num_layers == d.iou_head_depth
    assert dec.iou_prediction_head.layers[0].out_features == d.iou_head_hidden_dim
    assert dec.iou_prediction_head.sigmoid_output == d.iou_prediction_use_sigmoid
    assert dec.use_high_res_features == d.use_high_res_features
    assert dec.dynamic_multimask_via_stability == d.dynamic_multimask_via_stability
    assert dec.dynamic_multimask_stability_delta == d.dynamic_multimask_stability_delta
    assert dec.dynamic_multimask_stability_thresh == d.dynamic_multimask_stability_thresh
    assert dec.pred_obj_scores == d.pred_obj_scores
    assert hasattr(dec.pred_obj_score_head, "layers") == d.pred_obj_scores_mlp
    assert dec.use_multimask_token_for_obj_ptr == d.use_multimask_token_for_obj_ptr
    nested = {
        "name",
        "family",
        "image_encoder",
        "prompt_encoder",
        "mask_decoder",
        "pixel_mean",
        "pixel_std",
        "memory_attention",
        "memory_encoder",
    }  # the memory modules are checked in test_sam2_video_modules_live.py
    for field in dataclasses.fields(cfg):
        if field.name in nested or field.name == "mask_threshold":
            continue
        value = getattr(ref, field.name)
        if field.name == "no_obj_embed_spatial":  # the reference keeps the parameter, or None
            value = value is not None
        assert value == getattr(cfg, field.name), field.name
    assert ref.num_feature_levels == cfg.num_feature_levels
    assert ref.use_high_res_features_in_sam == cfg.use_high_res_features_in_sam


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_registry_matches_the_reference_yaml(name):
    """Keys, shapes, parameter count and settings of ``build_sam2(<yaml>)``, built on the meta device."""
    pytest.importorskip("sam2")
    import sam2_reference

    cfg = get_config(name)
    ref = sam2_reference.build_from_yaml(name, device="meta")
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    image, video = sam2_rules.split_state_dict(shapes)
    assert image == sam2_rules.expected_shapes(cfg)
    assert sum(map(math.prod, image.values())) == _count(nnx.state(sam2_rules.abstract_image_model(cfg)))
    assert {k.split(".", 1)[0] for k in video} <= sam2_rules.KEEP_FOR_VIDEO
    assert ("no_obj_embed_spatial" in video) == cfg.no_obj_embed_spatial
    _reference_settings_match(cfg, ref)


# --------------------------------------------------------------------------- converter


def _random_state_dict(cfg: Sam2Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in sam2_rules.expected_shapes(cfg).items()}


def test_converter_round_trip_and_video_keys_kept_aside():
    cfg = get_config("sam2_test")
    sd = _random_state_dict(cfg)
    video = {
        "no_mem_pos_enc": np.zeros((1, 1, 32), np.float32),
        "memory_encoder.out_proj.weight": np.zeros((64, 32, 1, 1)),
    }
    params = sam2_rules.to_params({**sd, **video}, cfg)
    back = sam2_rules.to_state_dict(params, cfg)
    assert back.keys() == sd.keys()
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    assert sam2_rules.split_state_dict({**sd, **video})[1].keys() == video.keys()
    # Layouts: Linear transposed, Conv OIHW -> HWIO, ConvTranspose flipped, pos_embed channels-last.
    trunk = params["image_encoder"]["trunk"]
    np.testing.assert_array_equal(
        trunk["blocks"][0]["attn"]["qkv"]["kernel"], sd["image_encoder.trunk.blocks.0.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(trunk["pos_embed"], sd["image_encoder.trunk.pos_embed"].transpose(0, 2, 3, 1))
    up = params["sam_mask_decoder"]["output_upscaling"][0]["kernel"]
    np.testing.assert_array_equal(
        up, sd["sam_mask_decoder.output_upscaling.0.weight"].transpose(2, 3, 0, 1)[::-1, ::-1]
    )
    mlp = params["sam_mask_decoder"]["transformer"]["layers"][1]["mlp"]["lin2"]["kernel"]
    np.testing.assert_array_equal(mlp, sd["sam_mask_decoder.transformer.layers.1.mlp.layers.1.weight"].T)
    model = sam2_rules.build_image_model(cfg, params)
    np.testing.assert_array_equal(model.image_encoder.neck.convs[3].conv.kernel[...],
                                  params["image_encoder"]["neck"]["convs"][3]["conv"]["kernel"])  # fmt: skip


def test_converter_lists_every_problem():
    cfg = get_config("sam2_test")
    sd = _random_state_dict(cfg)
    del sd["image_encoder.trunk.pos_embed_window"]
    sd["sam_mask_decoder.iou_token.weight"] = np.zeros((2, 32), np.float32)
    sd["sam_mask_decoder.not_a_thing"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as err:
        sam2_rules.to_params(sd, cfg, source="test.pt")
    msg = str(err.value)
    assert "test.pt does not match SAM 2 sam2_test" in msg
    assert "missing (1):\n  image_encoder.trunk.pos_embed_window" in msg
    assert "unexpected (1):\n  sam_mask_decoder.not_a_thing" in msg
    assert "sam_mask_decoder.iou_token.weight: expected (1, 32), got (2, 32)" in msg
    # Only the image encoder: the other parts may be anything (or absent).
    enc = {k: v for k, v in sd.items() if k.startswith("image_encoder.")}
    enc["image_encoder.trunk.pos_embed_window"] = np.zeros((1, 16, 8, 8), np.float32)
    assert set(sam2_rules.to_params(enc, cfg, parts=("image_encoder",))) == {"image_encoder"}


def test_build_image_model_rejects_params_that_do_not_fit():
    cfg = get_config("sam2_test")
    params = sam2_rules.to_params(_random_state_dict(cfg), cfg)
    del params["sam_mask_decoder"]["iou_token"]
    with pytest.raises(ConversionError, match="iou_token"):
        sam2_rules.build_image_model(cfg, params)
