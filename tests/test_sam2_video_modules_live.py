"""SAM 2 video modules (memory attention, memory encoder, the video tensors of ``SAM2Base``) against
the installed reference (``sam2==1.1.0``).

- Settings: every released config's memory modules equal what ``build_sam2(<yaml>)`` instantiates
  (hydra, meta device), and the converter's table of :class:`Sam2VideoParts` equals the reference's
  video-only state_dict keys and shapes, for all eight configs.
- Numbers: every parameter and buffer of the reference is redrawn (:func:`sam2_reference.randomize_`;
  none is left constant: layer-scale ``gamma``, ``maskmem_tpos_enc``, ``no_obj_ptr``, norms), converted
  with :mod:`sam_jax.convert.sam2_video_rules` and the modules compared at the ``sam2_test`` config
  and at full SAM 2.1 hiera_tiny size (memory attention on the 64x64 grid with several memory frames
  and object-pointer tokens). fp32, highest matmul precision; bar 1e-4 max |diff| (measured: about
  2e-6 at test size, 3e-6 / 5e-6 at full size).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sam2")
import torch
from flax import nnx
from sam2.modeling.position_encoding import compute_axial_cis

from sam_jax.convert import sam2_rules, sam2_video_rules
from sam_jax.convert.rules import ConversionError
from sam_jax.models.sam2 import video_model as vm
from sam_jax.models.sam2.config import (
    MODEL_TYPES,
    YAML_FILES,
    MemoryAttentionConfig,
    MemoryEncoderConfig,
    RoPEAttentionConfig,
    Sam2Config,
    get_config,
)
from sam_jax.models.sam2.rope import axial_rotations
from sam_jax.ops.policy import XLA, ExecutionPolicy

import sam2_reference as ref_lib

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)

TOL = 1e-4
FULL = "sam2.1_hiera_tiny"


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b)))


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def seq_first(x: np.ndarray) -> np.ndarray:
    """``(B, N, C)`` <-> the reference's ``(N, B, C)``."""
    return np.ascontiguousarray(x.transpose(1, 0, 2))


@functools.cache
def make_pair(name: str):
    """``(config, reference SAM2Base with memory modules, our Sam2VideoParts)``, same random weights."""
    cfg = get_config(name)
    ref = ref_lib.randomize_(ref_lib.build_video_from_config(cfg), seed=3)
    assert ref_lib.count_constant(ref) == 0
    _, video = sam2_rules.split_state_dict(ref_lib.state_dict_numpy(ref))
    parts = sam2_video_rules.build_video_parts(cfg, sam2_video_rules.to_params(video, cfg, source="reference"))
    return cfg, ref, parts


@pytest.fixture(scope="module", params=["sam2_test", FULL])
def pair(request):
    return make_pair(request.param)


# --------------------------------------------------------------------------- settings vs the yamls


def _compose(name: str):
    import sam2  # noqa: F401  (hydra's search path)
    from hydra import compose

    return compose(config_name=YAML_FILES[name], overrides=ref_lib.POSTPROCESSING_OVERRIDES).model


def _rope_matches(cfg: RoPEAttentionConfig, attn, node) -> None:
    assert (attn.embedding_dim, attn.num_heads, attn.internal_dim, attn.kv_in_dim) == (
        cfg.embedding_dim,
        cfg.num_heads,
        cfg.internal_dim,
        cfg.kv_dim,
    )
    assert attn.rope_k_repeat == cfg.rope_k_repeat and attn.dropout_p == cfg.dropout
    assert attn.compute_cis.keywords == {"dim": cfg.internal_dim // cfg.num_heads, "theta": cfg.rope_theta}
    assert tuple(node.feat_sizes) == cfg.feat_sizes
    assert tuple(attn.freqs_cis.shape) == (math.prod(cfg.feat_sizes), cfg.internal_dim // cfg.num_heads // 2)


def _memory_attention_matches(cfg: MemoryAttentionConfig, ma, node) -> None:
    assert (ma.d_model, ma.num_layers, ma.pos_enc_at_input, ma.batch_first) == (
        cfg.d_model,
        cfg.num_layers,
        cfg.pos_enc_at_input,
        cfg.batch_first,
    )
    assert ma.norm.eps == cfg.layer_norm_eps
    for layer in ma.layers:
        assert (layer.activation_str, layer.dim_feedforward, layer.dropout_value) == (
            cfg.activation,
            cfg.dim_feedforward,
            cfg.dropout,
        )
        assert (layer.pos_enc_at_attn, layer.pos_enc_at_cross_attn_keys, layer.pos_enc_at_cross_attn_queries) == (
            cfg.pos_enc_at_attn,
            cfg.pos_enc_at_cross_attn_keys,
            cfg.pos_enc_at_cross_attn_queries,
        )
        assert layer.norm1.eps == layer.norm2.eps == layer.norm3.eps == cfg.layer_norm_eps
        _rope_matches(cfg.self_attention, layer.self_attn, node.layer.self_attention)
        _rope_matches(cfg.cross_attention, layer.cross_attn_image, node.layer.cross_attention)


def _memory_encoder_matches(cfg: MemoryEncoderConfig, me, node) -> None:
    ds, cx = cfg.mask_downsampler, cfg.fuser_layer
    convs = [m for m in me.mask_downsampler.encoder if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == ds.num_layers + 1
    for conv in convs[:-1]:
        assert (conv.kernel_size, conv.stride, conv.padding) == (
            (ds.kernel_size,) * 2,
            (ds.stride,) * 2,
            (ds.padding,) * 2,
        )
    assert math.prod(c.stride[0] for c in convs) == ds.total_stride
    assert convs[-1].out_channels == ds.embed_dim and convs[-1].kernel_size == (1, 1)
    assert me.mask_downsampler.encoder[1].eps == ds.layer_norm_eps
    assert (
        isinstance(me.mask_downsampler.encoder[2], torch.nn.GELU)
        and me.mask_downsampler.encoder[2].approximate == "none"
    )
    assert isinstance(me.fuser.proj, torch.nn.Conv2d) == cfg.fuser_input_projection
    assert len(me.fuser.layers) == cfg.fuser_num_layers
    for block in me.fuser.layers:
        conv = block.dwconv
        assert (conv.in_channels, conv.kernel_size, conv.padding) == (cx.dim, (cx.kernel_size,) * 2, (cx.padding,) * 2)
        assert (conv.groups == cx.dim) == cx.use_dwconv and block.norm.eps == cx.layer_norm_eps
        assert (block.gamma is not None) == (cx.layer_scale_init_value > 0)
        assert isinstance(block.drop_path, torch.nn.Identity) == (cx.drop_path == 0)
    assert float(node.fuser.layer.layer_scale_init_value) == cx.layer_scale_init_value
    assert me.pix_feat_proj.in_channels == cfg.in_dim
    out_channels = me.out_proj.out_channels if isinstance(me.out_proj, torch.nn.Conv2d) else cfg.in_dim
    assert out_channels == cfg.out_dim
    pos = me.position_encoding
    assert 2 * pos.num_pos_feats == cfg.pos_num_pos_feats and pos.temperature == cfg.pos_temperature
    assert pos.normalize == cfg.pos_normalize
    assert pos.scale == (2 * math.pi if cfg.pos_scale is None else cfg.pos_scale)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_memory_settings_match_the_reference_yaml(name):
    """The memory modules and memory-bank settings of ``build_sam2(<yaml>)`` (meta device)."""
    cfg = get_config(name)
    ref = ref_lib.build_from_yaml(name, device="meta")
    node = _compose(name)
    _memory_attention_matches(cfg.memory_attention, ref.memory_attention, node.memory_attention)
    _memory_encoder_matches(cfg.memory_encoder, ref.memory_encoder, node.memory_encoder)
    assert (ref.hidden_dim, ref.mem_dim) == (cfg.hidden_dim, cfg.mem_dim)
    for field in (
        "max_cond_frames_in_attn",
        "memory_temporal_stride_for_eval",
        "binarize_mask_from_pts_for_mem_enc",
        "non_overlap_masks_for_mem_enc",
    ):
        assert getattr(ref, field) == getattr(cfg, field), field


def test_reference_builder_builds_the_test_config_as_configured():
    """``build_video_from_config`` (used by the parity tests below) reflects every field too."""
    cfg = get_config("sam2_test")
    ref = ref_lib.build_video_from_config(cfg)
    ma, me = cfg.memory_attention, cfg.memory_encoder
    # What the yaml nodes would hold (the fields the modules do not keep).
    layer = SimpleNamespace(self_attention=ma.self_attention, cross_attention=ma.cross_attention)
    _memory_attention_matches(ma, ref.memory_attention, SimpleNamespace(layer=layer))
    enc_node = SimpleNamespace(fuser=SimpleNamespace(layer=me.fuser_layer))
    _memory_encoder_matches(me, ref.memory_encoder, enc_node)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_video_tensors_match_the_reference(name):
    """Our video parts' table (``nnx.eval_shape``) == the reference's video-only keys and shapes."""
    cfg = get_config(name)
    ref = ref_lib.build_from_yaml(name, device="meta")
    _, video = sam2_rules.split_state_dict({k: tuple(v.shape) for k, v in ref.state_dict().items()})
    assert sam2_video_rules.expected_shapes(cfg) == video
    # The converter's coarser check of the same tensors agrees.
    outside = {k: s for k, s in video.items() if k.split(".", 1)[0] not in sam2_rules.MEMORY_MODULES}
    assert sam2_rules.expected_video_shapes(cfg, cfg.mem_dim) == outside
    parts = sam2_video_rules.abstract_video_parts(cfg)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(parts))) == sum(map(math.prod, video.values()))


# --------------------------------------------------------------------------- converter


def _random_video(cfg: Sam2Config, seed: int = 0) -> dict[str, np.ndarray]:
    return {k: ref_lib.random_tensor(k, s, seed) for k, s in sam2_video_rules.expected_shapes(cfg).items()}


def test_video_converter_round_trip_and_layouts(tmp_path):
    from safetensors.numpy import save_file

    cfg = get_config("sam2_test")
    video = _random_video(cfg)
    params = sam2_video_rules.to_params(video, cfg)
    back = sam2_video_rules.to_state_dict(params, cfg)
    assert back.keys() == video.keys() and all(np.array_equal(back[k], video[k]) for k in video)
    layer = params["memory_attention"]["layers"][1]
    np.testing.assert_array_equal(
        layer["cross_attn_image"]["k_proj"]["kernel"],
        video["memory_attention.layers.1.cross_attn_image.k_proj.weight"].T,
    )
    block = params["memory_encoder"]["fuser"]["layers"][0]
    np.testing.assert_array_equal(
        block["dwconv"]["kernel"], video["memory_encoder.fuser.layers.0.dwconv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(block["gamma"], video["memory_encoder.fuser.layers.0.gamma"])
    np.testing.assert_array_equal(params["maskmem_tpos_enc"], video["maskmem_tpos_enc"])
    np.testing.assert_array_equal(
        params["obj_ptr_proj"]["layers"][2]["kernel"], video["obj_ptr_proj.layers.2.weight"].T
    )
    # The loader of a converted directory.
    save_file(video, str(tmp_path / sam2_video_rules.VIDEO_FILE))
    parts = sam2_video_rules.load_video_parts(tmp_path, cfg)
    np.testing.assert_array_equal(
        np.asarray(parts.memory_encoder.mask_downsampler.encoder[0].kernel[...]),
        video["memory_encoder.mask_downsampler.encoder.0.weight"].transpose(2, 3, 1, 0),
    )
    with pytest.raises(FileNotFoundError, match=r"video\.safetensors"):
        sam2_video_rules.load_video_parts(tmp_path / "nowhere", cfg)


def test_video_converter_lists_every_problem():
    cfg = get_config("sam2_test")
    video = _random_video(cfg)
    del video["no_obj_embed_spatial"]
    video["maskmem_tpos_enc"] = np.zeros((6, 1, 1, 16), np.float32)
    video["memory_encoder.not_a_thing"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as err:
        sam2_video_rules.to_params(video, cfg, source="video.safetensors")
    msg = str(err.value)
    assert "video.safetensors do not match SAM 2 sam2_test's video model" in msg
    assert "missing (1):\n  no_obj_embed_spatial" in msg
    assert "unexpected (1):\n  memory_encoder.not_a_thing" in msg
    assert "maskmem_tpos_enc: expected (7, 1, 1, 16), got (6, 1, 1, 16)" in msg
    params = sam2_video_rules.to_params(_random_video(cfg), cfg)
    del params["memory_attention"]["norm"]
    with pytest.raises(ConversionError, match="memory_attention"):
        sam2_video_rules.build_video_parts(cfg, params)


# --------------------------------------------------------------------------- module parity


def test_axial_rotations_are_the_references_cis():
    for dim, ex, ey in [(256, 64, 64), (16, 8, 8), (32, 6, 4)]:
        cis = compute_axial_cis(dim, ex, ey, 10000.0).numpy()
        cos, sin = axial_rotations(dim, ex, ey, 10000.0)
        assert max_abs(cos, cis.real) <= 1e-6 and max_abs(sin, cis.imag) <= 1e-6


def test_memory_encoder(pair):
    cfg, ref, parts = pair
    g = cfg.image_size // cfg.backbone_stride
    rng = np.random.default_rng(1)
    pix = rng.standard_normal((2, cfg.hidden_dim, g, g), dtype=np.float32)
    masks = 6 * rng.standard_normal((2, 1, 16 * g, 16 * g), dtype=np.float32)
    for skip in (False, True):
        with torch.no_grad():
            out = ref.memory_encoder(t(pix), t(masks), skip_mask_sigmoid=skip)
        feats, pos = nnx.jit(lambda m, p, k, s=skip: m.memory_encoder(p, k, s))(
            parts, pix.transpose(0, 2, 3, 1), masks.transpose(0, 2, 3, 1)
        )
        err = max_abs(feats, out["vision_features"].numpy().transpose(0, 2, 3, 1))
        assert err <= TOL, f"{cfg.name} memory features (skip_mask_sigmoid={skip}): {err:.2e}"
        assert max_abs(pos, out["vision_pos_enc"][0].numpy().transpose(0, 2, 3, 1)) <= 1e-6


def _memory_inputs(cfg: Sam2Config, grid: int, frames: int, ptr_tokens: int, batch: int = 2, seed: int = 2):
    rng = np.random.default_rng(seed)
    n, m = grid * grid, frames * grid * grid + ptr_tokens
    curr = rng.standard_normal((batch, n, cfg.hidden_dim), dtype=np.float32)
    curr_pos = rng.standard_normal((batch, n, cfg.hidden_dim), dtype=np.float32)
    memory = rng.standard_normal((batch, m, cfg.mem_dim), dtype=np.float32)
    memory_pos = rng.standard_normal((batch, m, cfg.mem_dim), dtype=np.float32)
    return curr, memory, curr_pos, memory_pos


def _reference_memory_attention(ref, curr, memory, curr_pos, memory_pos, ptr_tokens):
    with torch.no_grad():
        out = ref.memory_attention(
            curr=[t(seq_first(curr))],
            memory=t(seq_first(memory)),
            curr_pos=[t(seq_first(curr_pos))],
            memory_pos=t(seq_first(memory_pos)),
            num_obj_ptr_tokens=ptr_tokens,
        )
    return seq_first(out.numpy())


def test_memory_attention(pair):
    """At the config's grid: 4 memory frames and 4 object pointers split into ``C / mem_dim`` tokens."""
    cfg, ref, parts = pair
    grid = cfg.image_size // cfg.backbone_stride
    ptr_tokens = 4 * (cfg.hidden_dim // cfg.mem_dim)
    inputs = _memory_inputs(cfg, grid, frames=4, ptr_tokens=ptr_tokens)
    want = _reference_memory_attention(ref, *inputs, ptr_tokens)
    got = nnx.jit(lambda m, *a: m.memory_attention(*a, num_obj_ptr_tokens=ptr_tokens))(parts, *inputs)
    err = max_abs(got, want)
    assert err <= TOL, f"{cfg.name} memory attention: {err:.2e}"


@pytest.mark.parametrize(("grid", "frames", "ptr_tokens"), [(8, 1, 0), (4, 3, 6), (6, 2, 0)])
def test_memory_attention_other_grids_and_no_pointers(grid, frames, ptr_tokens):
    """Test size: one frame and no pointers; grids other than ``feat_sizes`` (the reference
    recomputes its rotations for the square grid of the queries)."""
    cfg, ref, parts = make_pair("sam2_test")
    inputs = _memory_inputs(cfg, grid, frames, ptr_tokens, batch=1)
    want = _reference_memory_attention(ref, *inputs, ptr_tokens)
    got = parts.memory_attention(*map(jnp.asarray, inputs), num_obj_ptr_tokens=ptr_tokens)
    assert max_abs(got, want) <= TOL


@pytest.mark.parametrize("blocked", [False, True], ids=["whole", "blocked"])
def test_memory_attention_with_empty_slots_is_the_reference_without_them(blocked):
    """A fixed-size bank: empty memory frames and pointer tokens masked by ``memory_valid`` give the
    reference's result on the filled ones only (test size; the masked path is the same at any size),
    whole or blocked (CPUs: query blocks, one frame's keys at a time, empty frames skipped)."""
    cfg, ref, parts = make_pair("sam2_test")
    grid = cfg.image_size // cfg.backbone_stride
    n, per_ptr = grid * grid, cfg.hidden_dim // cfg.mem_dim
    frames, ptrs = 4, 5
    curr, memory, curr_pos, memory_pos = _memory_inputs(cfg, grid, frames, ptrs * per_ptr, batch=1)
    frame_valid = np.array([True, False, True, True])
    ptr_valid = np.array([True, True, False, True, False])
    valid = np.concatenate([np.repeat(frame_valid, n), np.repeat(ptr_valid, per_ptr)])
    kept = int(ptr_valid.sum()) * per_ptr
    want = _reference_memory_attention(ref, curr, memory[:, valid], curr_pos, memory_pos[:, valid], kept)
    got = parts.memory_attention(
        *map(jnp.asarray, (curr, memory, curr_pos, memory_pos)),
        num_obj_ptr_tokens=ptrs * per_ptr,
        memory_valid=jnp.asarray(valid[None]),
        policy=ExecutionPolicy(blocked=True, score_block=n * 4) if blocked else XLA,
    )
    assert max_abs(got, want) <= TOL


def test_config_validation_names_what_is_wrong():
    with pytest.raises(ValueError, match="multiple of 4"):
        RoPEAttentionConfig(embedding_dim=24, num_heads=4)
    with pytest.raises(ValueError, match="power of stride"):
        dataclasses.replace(get_config("sam2_test").memory_encoder.mask_downsampler, total_stride=12)
    base = get_config("sam2_test")
    with pytest.raises(ValueError, match="kv_in_dim"):
        dataclasses.replace(base, memory_encoder=dataclasses.replace(base.memory_encoder, out_dim=8))


# --------------------------------------------------------------------------- SAM2Base's memory functions


def _with_settings(ref, parts, **settings):
    """The same weights under other memory-bank settings (reference attributes and our config)."""
    for k, v in settings.items():
        setattr(ref, k, v)
    parts = nnx.clone(parts)
    parts.config = dataclasses.replace(parts.config, **settings)
    return parts


BINARIZE = {"binarize_mask_from_pts_for_mem_enc": True, "non_overlap_masks_for_mem_enc": True}


@pytest.mark.parametrize(
    ("name", "settings"),
    [("sam2_test", {}), ("sam2_test", BINARIZE), (FULL, {})],
    ids=["test-default", "test-binarize+non_overlap", "full-default"],
)
def test_encode_new_memory(name, settings):
    cfg, ref, parts = make_pair(name)
    saved = {k: getattr(ref, k) for k in settings}
    try:
        ours = _with_settings(ref, parts, **settings)
        g = cfg.image_size // cfg.backbone_stride
        rng = np.random.default_rng(5)
        b = 3 if name == "sam2_test" else 2
        pix = rng.standard_normal((b, g, g, cfg.hidden_dim), dtype=np.float32)
        masks = 8 * rng.standard_normal((b, 1, 16 * g, 16 * g), dtype=np.float32)
        scores = np.array([[2.0], [-1.0], [0.5]][:b], np.float32)  # one absent object
        for from_pts in (False, True):
            with torch.no_grad():
                feats, pos = ref._encode_new_memory(
                    [t(pix.reshape(b, g * g, -1).transpose(1, 0, 2))], [(g, g)], t(masks), t(scores), from_pts
                )
            got = nnx.jit(vm.encode_new_memory)(ours, pix, masks.transpose(0, 2, 3, 1), scores, jnp.asarray(from_pts))
            err = max_abs(got[0], feats.numpy().transpose(0, 2, 3, 1))
            assert err <= TOL, f"{cfg.name} {settings} from_pts={from_pts}: {err:.2e}"
            assert max_abs(got[1], pos[0].numpy().transpose(0, 2, 3, 1)) <= 1e-6
    finally:
        for k, v in saved.items():
            setattr(ref, k, v)


def _frame_outputs(cfg: Sam2Config, frames, batch: int, rng) -> dict:
    g = cfg.image_size // cfg.backbone_stride
    return {
        t_: {
            "maskmem_features": rng.standard_normal((batch, cfg.mem_dim, g, g), dtype=np.float32),
            "maskmem_pos_enc": [rng.standard_normal((batch, cfg.mem_dim, g, g), dtype=np.float32)],
            "obj_ptr": rng.standard_normal((batch, cfg.hidden_dim), dtype=np.float32),
        }
        for t_ in frames
    }


def _ours(outputs: dict) -> dict:
    return {
        "maskmem_features": outputs["maskmem_features"].transpose(0, 2, 3, 1),
        "maskmem_pos_enc": outputs["maskmem_pos_enc"][0].transpose(0, 2, 3, 1),
        "obj_ptr": outputs["obj_ptr"],
    }


def _torch(outputs: dict) -> dict:
    return {
        "maskmem_features": t(outputs["maskmem_features"]),
        "maskmem_pos_enc": [t(outputs["maskmem_pos_enc"][0])],
        "obj_ptr": t(outputs["obj_ptr"]),
    }


# (settings, conditioning frames, tracked frames, [(frame_idx, reverse)])
SCENARIOS = {
    "forward+reverse": ({}, [0, 12], [*range(1, 10), 11, 13, 14], [(10, False), (15, False), (11, True), (5, False)]),
    "max_cond_2+stride_2": (
        {"max_cond_frames_in_attn": 2, "memory_temporal_stride_for_eval": 2},
        [0, 6, 12, 20],
        [*range(1, 6), *range(7, 12), *range(13, 20)],
        [(13, False), (9, False), (7, True)],
    ),
}


@pytest.mark.parametrize(
    ("name", "scenario"), [("sam2_test", s) for s in sorted(SCENARIOS)] + [(FULL, "forward+reverse")]
)
def test_prepare_memory_conditioned_features(name, scenario):
    """The host-side selection (:func:`select_memory`) into a fixed-size bank, then the jitted
    conditioning: the reference's ``_prepare_memory_conditioned_features`` on the same output dicts."""
    cfg, ref, parts = make_pair(name)
    settings, cond, non_cond, frames = SCENARIOS[scenario]
    if name == FULL:
        frames = frames[:1]  # full size (8 memory frames, 10 pointers): one frame, for time
    saved = {k: getattr(ref, k) for k in settings}
    try:
        ours = _with_settings(ref, parts, **settings)
        g, b, num_frames = cfg.image_size // cfg.backbone_stride, 2, 30
        rng = np.random.default_rng(6)
        outputs = {"cond": _frame_outputs(cfg, cond, b, rng), "non_cond": _frame_outputs(cfg, non_cond, b, rng)}
        ref_dict = {f"{k}_frame_outputs": {f: _torch(o) for f, o in v.items()} for k, v in outputs.items()}
        our_dict = {k: {f: _ours(o) for f, o in v.items()} for k, v in outputs.items()}
        curr = rng.standard_normal((b, g, g, cfg.hidden_dim), dtype=np.float32)
        curr_pos = rng.standard_normal((b, g, g, cfg.hidden_dim), dtype=np.float32)
        step = nnx.jit(vm.prepare_memory_conditioned_features)
        for frame_idx, reverse in frames:
            with torch.no_grad():
                want = ref._prepare_memory_conditioned_features(
                    frame_idx,
                    False,
                    [t(seq_first(curr.reshape(b, g * g, -1)))],
                    [t(seq_first(curr_pos.reshape(b, g * g, -1)))],
                    [(g, g)],
                    ref_dict,
                    num_frames,
                    reverse,
                )
            selection = vm.select_memory(ours.config, frame_idx, cond, non_cond, num_frames, reverse)
            bank = vm.stack_memory_bank(ours.config, selection, our_dict, cond_slots=len(cond))
            got = step(ours, jnp.asarray(curr), jnp.asarray(curr_pos), jax.tree.map(jnp.asarray, bank))
            err = max_abs(got, want.numpy().transpose(0, 2, 3, 1))
            assert err <= TOL, f"{cfg.name} {scenario} frame {frame_idx} reverse={reverse}: {err:.2e}"
    finally:
        for k, v in saved.items():
            setattr(ref, k, v)
