"""transformers SAM 2 checkpoints (``Sam2Model``, ``Sam2VideoModel``; the Hub's ``facebook/sam2.1-hiera-*``)
-> sam_jax, through :mod:`sam_jax.convert.sam2_transformers`.

The name table is checked where transformers itself is the judge: SAM 2 weights moved to transformers'
names load into ``Sam2Model`` / ``Sam2VideoModel`` with ``load_state_dict(strict=True)`` (every released
size on torch's meta device, which allocates nothing; the ``sam2_test`` config with real random
weights). Then the same weights saved both ways (``Sam2Model.save_pretrained``; Meta's
``{"model": state_dict}`` ``.pt``) convert to bit-identical sam_jax parameters, and our
``SAM2ImagePredictor`` predicts what ``Sam2Model.forward`` does.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

pytest.importorskip("sam2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is imported; nothing here needs the Hub
import transformers
from safetensors.numpy import load_file, save_file
from scipy import ndimage

from sam_jax import checkpoint
from sam_jax.build import load_sam
from sam_jax.convert import sam2_rules, sam2_transformers
from sam_jax.convert.command import convert_checkpoint
from sam_jax.convert.detect import detect_model_type
from sam_jax.convert.rules import ConversionError
from sam_jax.models.sam2.config import MODEL_TYPES, Sam2Config, get_config
from sam_jax.models.sam2.transforms import squash_image, transform_coords
from sam_jax.predictors.sam2 import SAM2ImagePredictor

import sam2_reference as ref_lib

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)
TEST = get_config("sam2_test")
LOGITS_TOL = 1e-4  # low-res mask logits, ours vs Sam2Model.forward (measured 2.4e-6)
IOU_TOL = 1e-5  # IoU predictions (measured 6e-8)
MEAN, STD = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])


def hf_config(cfg: Sam2Config, *, video: bool = False) -> transformers.PretrainedConfig:
    """transformers' ``Sam2Config`` (or ``Sam2VideoConfig``) of the model ``cfg`` describes, as
    ``convert_sam2_to_hf.get_config`` writes the released ones, from our config's fields."""
    t, neck, pe, dec = cfg.image_encoder.trunk, cfg.image_encoder.neck, cfg.prompt_encoder, cfg.mask_decoder
    g = cfg.image_size // cfg.backbone_stride
    backbone = transformers.Sam2HieraDetConfig(
        hidden_size=t.embed_dim,
        num_attention_heads=t.num_heads,
        image_size=[cfg.image_size] * 2,
        query_stride=list(t.q_stride),
        window_positional_embedding_background_size=list(t.window_pos_embed_bkg_spatial_size),
        num_query_pool_stages=t.q_pool,
        blocks_per_stage=list(t.stages),
        embed_dim_per_stage=list(t.channel_list[::-1]),
        num_attention_heads_per_stage=[int(t.num_heads * t.head_mul**i) for i in range(len(t.stages))],
        window_size_per_stage=list(t.window_spec),
        global_attention_blocks=list(t.global_att_blocks),
    )
    parts = {
        "vision_config": transformers.Sam2VisionConfig(
            backbone_config=backbone,
            backbone_channel_list=list(neck.backbone_channel_list),
            backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]],
            fpn_hidden_size=neck.d_model,
            fpn_top_down_levels=list(neck.fpn_top_down_levels),
        ),
        "prompt_encoder_config": transformers.Sam2PromptEncoderConfig(
            hidden_size=pe.embed_dim,
            image_size=pe.input_image_size,
            patch_size=pe.input_image_size // pe.image_embedding_size,
            mask_input_channels=pe.mask_in_chans,
        ),
        "mask_decoder_config": transformers.Sam2MaskDecoderConfig(
            hidden_size=dec.transformer_dim,
            mlp_dim=dec.transformer_mlp_dim,
            num_attention_heads=dec.transformer_num_heads,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
    }
    if not video:
        return transformers.Sam2Config(**parts)
    return transformers.Sam2VideoConfig(
        **{k: v.to_dict() for k, v in parts.items()},
        image_size=cfg.image_size,
        enable_occlusion_spatial_embedding=cfg.no_obj_embed_spatial,
        enable_temporal_pos_encoding_for_object_pointers=cfg.proj_tpos_enc_in_obj_ptrs,
    )


def _torch(state_dict: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}


@functools.cache
def _params(directory: Path) -> tuple[tuple[str, np.ndarray], ...]:
    """The parameters written to ``directory`` (flattened), restored as ``sam2_test``'s tree."""
    like = sam2_rules.to_params({k: np.zeros(v, np.float32) for k, v in sam2_rules.expected_shapes(TEST).items()}, TEST)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    flat = jax.tree_util.tree_flatten_with_path(checkpoint.load_params(directory, abstract))[0]
    return tuple((jax.tree_util.keystr(p), np.asarray(v)) for p, v in flat)


def _assert_same_params(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert [k for k, _ in pa] == [k for k, _ in pb]
    for (k, x), (_, y) in zip(pa, pb, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), k


# The memory modules of sam2_test, by name (values random; the converter keeps them as they are):
# a 2-stage mask downsampler (final conv at encoder.6) checks the depth-dependent renames.
MEMORY = {
    "memory_attention.layers.0.self_attn.out_proj.weight": (32, 32),
    "memory_attention.layers.0.cross_attn_image.k_proj.weight": (32, 16),
    "memory_attention.layers.0.norm2.bias": (32,),
    "memory_attention.layers.0.linear1.weight": (64, 32),
    "memory_attention.norm.weight": (32,),
    "memory_encoder.mask_downsampler.encoder.0.weight": (8, 1, 3, 3),
    "memory_encoder.mask_downsampler.encoder.1.weight": (8,),
    "memory_encoder.mask_downsampler.encoder.3.weight": (32, 8, 3, 3),
    "memory_encoder.mask_downsampler.encoder.4.bias": (32,),
    "memory_encoder.mask_downsampler.encoder.6.weight": (32, 32, 1, 1),
    "memory_encoder.pix_feat_proj.weight": (32, 32, 1, 1),
    "memory_encoder.fuser.layers.0.gamma": (32,),
    "memory_encoder.fuser.layers.0.dwconv.weight": (32, 1, 7, 7),
    "memory_encoder.fuser.layers.0.norm.weight": (32,),
    "memory_encoder.fuser.layers.0.pwconv2.weight": (32, 128),
    "memory_encoder.out_proj.weight": (16, 32, 1, 1),
}


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    """A whole SAM2Base state_dict of ``sam2_test`` in Meta's names: the reference's image model and
    own video tensors with every tensor redrawn, plus the memory modules of :data:`MEMORY`."""
    ref = ref_lib.randomize_(ref_lib.build_from_config(TEST), seed=5)
    state_dict = ref_lib.state_dict_numpy(ref)
    state_dict |= {k: ref_lib.random_tensor(k, s, 5) for k, s in MEMORY.items()}
    # SAM2Base (no memory encoder given) sized the video tensors for mem_dim = d_model; redraw them at 16.
    state_dict |= {k: ref_lib.random_tensor(k, s, 5) for k, s in sam2_rules.expected_video_shapes(TEST, 16).items()}
    return state_dict


@pytest.fixture(scope="module")
def hf_model(weights) -> transformers.Sam2Model:
    """transformers' Sam2Model holding the image model of :func:`weights` (strict load)."""
    image, _ = sam2_rules.split_state_dict(weights)
    model = transformers.Sam2Model(hf_config(TEST)).eval()
    model.load_state_dict(sam2_transformers.to_transformers(_torch(image), stack=torch.cat), strict=True)
    return model


@pytest.fixture(scope="module")
def converted(weights, hf_model, tmp_path_factory) -> dict[str, Path]:
    """Directories converted from Meta's ``.pt`` and from ``Sam2Model.save_pretrained``."""
    tmp = tmp_path_factory.mktemp("sam2_hf")
    torch.save({"model": _torch(weights)}, tmp / "meta.pt")
    hf_model.save_pretrained(tmp / "hf")
    return {
        "meta": convert_checkpoint(tmp / "meta.pt", tmp / "from_meta", model_type="sam2_test"),
        "hf": convert_checkpoint(tmp / "hf", tmp / "from_hf", model_type="sam2_test"),
    }


# --------------------------------------------------------------------------- the name table


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_names_load_strictly_into_transformers(name):
    """Every tensor of each released SAM 2 / 2.1 file, under transformers' names, loads strictly into
    Sam2VideoModel, and the image model's into Sam2Model, same shapes; back again gives the file."""
    cfg = get_config(name)
    official = ref_lib.build_from_yaml(name, device="meta").state_dict()
    image, _ = sam2_rules.split_state_dict(official)
    with torch.device("meta"):
        video_model = transformers.Sam2VideoModel(hf_config(cfg, video=True))
        image_model = transformers.Sam2Model(hf_config(cfg))
    for model, sd in ((video_model, official), (image_model, image)):
        hf = sam2_transformers.to_transformers(sd, stack=torch.cat)
        assert {k: v.shape for k, v in hf.items()} == {k: v.shape for k, v in model.state_dict().items()}
        model.load_state_dict(hf, strict=True, assign=True)

    shapes = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in official.items()}
    back, _ = sam2_transformers.from_transformers(sam2_transformers.to_transformers(shapes))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in shapes.items()}
    assert detect_model_type(back) == name  # a Sam2VideoModel file tells SAM 2 from 2.1 ...
    image_back, _ = sam2_rules.split_state_dict(back)
    with pytest.raises(ValueError, match=re.escape("SAM 2 cannot be told from SAM 2.1: name the model type")):
        detect_model_type(image_back)  # ... a Sam2Model file cannot (same image model)


# --------------------------------------------------------------------------- files


def test_sam2model_file_converts_like_metas(converted):
    _assert_same_params(converted["hf"], converted["meta"])
    assert (converted["meta"] / sam2_rules.VIDEO_FILE).is_file()
    assert not (converted["hf"] / sam2_rules.VIDEO_FILE).exists()


def test_summary_names_the_layout_and_image_only(hf_model, tmp_path, capsys):
    hf_model.save_pretrained(tmp_path / "hf")
    convert_checkpoint(tmp_path / "hf", tmp_path / "out", model_type="sam2_test")
    summary = capsys.readouterr().out
    assert "safetensors file, transformers Sam2Model names; read model.safetensors from the directory" in summary
    assert "dropped shared_image_embedding.positional_embedding (identical to" in summary
    assert "split prompt_encoder.point_embed.weight into sam_prompt_encoder.point_embeddings.0-3.weight" in summary
    assert "image model only: the file has no video tensors" in summary


def test_pytorch_model_bin_converts_like_metas(converted, hf_model, tmp_path):
    (tmp_path / "bin").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    out = convert_checkpoint(tmp_path / "bin", tmp_path / "out", model_type="sam2_test")
    _assert_same_params(out, converted["meta"])


def test_video_file_keeps_video_tensors_under_metas_names(weights, converted, tmp_path):
    """A Sam2VideoModel-layout file (every tensor) converts to Meta's parameters and video.safetensors."""
    (tmp_path / "hf").mkdir()
    save_file(sam2_transformers.to_transformers(weights), str(tmp_path / "hf" / "model.safetensors"))
    out = convert_checkpoint(tmp_path / "hf", tmp_path / "out", model_type="sam2_test")
    _assert_same_params(out, converted["meta"])
    got = load_file(str(out / sam2_rules.VIDEO_FILE))
    want = load_file(str(converted["meta"] / sam2_rules.VIDEO_FILE))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------- predictions


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = ndimage.zoom(rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)), (8, 8, 1), order=1)[:h, :w]
    return np.clip(x, 0, 255).astype(np.uint8)


CASES = {
    "points": dict(point_coords=[[30.0, 40.0], [100.0, 60.0]], point_labels=[1, 0]),
    "one_point_single": dict(point_coords=[[70.0, 45.0]], point_labels=[1], multimask_output=False),
    "box": dict(box=[10.0, 20.0, 90.0, 70.0]),
    "box_points": dict(box=[10.0, 20.0, 120.0, 80.0], point_coords=[[50.0, 50.0]], point_labels=[0]),
    "mask": dict(point_coords=[[60.0, 30.0]], point_labels=[1], mask_input="previous", multimask_output=False),
}


@pytest.fixture(scope="module")
def predictors(converted, hf_model):
    img = _image(90, 140, 0)
    ours = SAM2ImagePredictor(load_sam(converted["hf"]))
    ours.set_image(img)
    pixels = torch.from_numpy(((squash_image(img, TEST.image_size) - MEAN) / STD).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        embeddings = hf_model.get_image_embeddings(pixels)
    return img, ours, embeddings


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_predictions_match_sam2model_forward(predictors, hf_model, case):
    """Low-res logits and IoU of our predictor vs ``Sam2Model.forward`` for the same prompt in the
    model's frame (transformers takes coordinates there; it leaves the logits unclamped, the
    predictors clamp them to [-32, 32]). transformers puts a box's corners after the points, SAM 2's
    predictor before them: the decoder's tokens attend without order, so only rounding differs."""
    img, ours, embeddings = predictors
    kwargs = dict(CASES[case])
    multimask = kwargs.pop("multimask_output", True)
    hf_inputs: dict = {}
    if kwargs.get("mask_input") == "previous":  # refine with the best low-res mask of a first call
        first = {k: v for k, v in kwargs.items() if k != "mask_input"}
        _, iou, low = ours.predict(**first, multimask_output=True)
        kwargs["mask_input"] = low[np.argmax(iou)][None]
        hf_inputs["input_masks"] = torch.from_numpy(kwargs["mask_input"][None])
    if "point_coords" in kwargs:
        coords = transform_coords(np.float32(kwargs["point_coords"]), img.shape[:2], TEST.image_size)
        hf_inputs["input_points"] = torch.from_numpy(coords)[None, None]
        hf_inputs["input_labels"] = torch.tensor(kwargs["point_labels"])[None, None]
    if "box" in kwargs:
        corners = transform_coords(np.float32(kwargs["box"]).reshape(2, 2), img.shape[:2], TEST.image_size)
        hf_inputs["input_boxes"] = torch.from_numpy(corners.reshape(1, 1, 4))

    _, iou, low = ours.predict(**kwargs, multimask_output=multimask)
    out = hf_model(image_embeddings=embeddings, multimask_output=multimask, **hf_inputs)
    want_low = np.clip(out.pred_masks[0, 0].numpy(), -32.0, 32.0)
    assert low.shape == want_low.shape
    assert np.abs(low - want_low).max() <= LOGITS_TOL
    assert np.abs(iou - out.iou_scores[0, 0].numpy()).max() <= IOU_TOL


# --------------------------------------------------------------------------- refusals


def _hf_state_dict(weights) -> dict[str, np.ndarray]:
    return sam2_transformers.to_transformers(sam2_rules.split_state_dict(weights)[0])


def _convert(state_dict: dict[str, np.ndarray], tmp_path: Path) -> Path:
    (tmp_path / "hf").mkdir(parents=True)
    save_file(state_dict, str(tmp_path / "hf" / "model.safetensors"))
    return convert_checkpoint(tmp_path / "hf", tmp_path / "out", model_type="sam2_test")


def test_refuses_unknown_missing_and_misshaped_tensors(weights, tmp_path):
    sd = _hf_state_dict(weights)
    sd["mask_decoder.surprise.weight"] = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match=r"holds tensors with no SAM 2 counterpart: mask_decoder\.surprise\.weight"):
        _convert(sd, tmp_path / "a")

    sd = _hf_state_dict(weights)
    del sd["vision_encoder.backbone.blocks.0.attn.qkv.bias"]
    sd["mask_decoder.iou_token.weight"] = np.zeros((2, 32), np.float32)
    with pytest.raises(ConversionError) as err:
        _convert(sd, tmp_path / "b")
    msg = str(err.value)
    assert "transformers Sam2Model names" in msg and "does not match SAM 2 sam2_test" in msg
    assert "missing (1):\n  image_encoder.trunk.blocks.0.attn.qkv.bias" in msg
    assert "sam_mask_decoder.iou_token.weight: expected (1, 32), got (2, 32)" in msg

    sd = _hf_state_dict(weights)
    sd[sam2_transformers.POINT_EMBED] = sd[sam2_transformers.POINT_EMBED][:3]
    with pytest.raises(ValueError, match=re.escape("point_embed.weight must be (4, C), one row per point label")):
        _convert(sd, tmp_path / "c")


def test_refuses_differing_positional_matrices(weights, tmp_path):
    sd = _hf_state_dict(weights)
    sd["shared_image_embedding.positional_embedding"] = sd["shared_image_embedding.positional_embedding"] + 1
    with pytest.raises(ValueError, match=r"shared_image_embedding\.positional_embedding differs from prompt_encoder"):
        _convert(sd, tmp_path)


def test_refuses_truncated_file(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    file = tmp_path / "hf" / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(
        ValueError, match=re.escape("model.safetensors is truncated or corrupt: expected a safetensors file")
    ):
        convert_checkpoint(tmp_path / "hf", tmp_path / "out", model_type="sam2_test")


def test_refuses_a_partial_set_of_video_tensors(weights, tmp_path):
    """No video tensor at all is an image-only file; some but not all is refused, as for Meta's files."""
    sd = sam2_transformers.to_transformers(weights)
    del sd["memory_temporal_positional_encoding"]
    with pytest.raises(ConversionError, match=r"missing \(1\):\n  maskmem_tpos_enc"):
        _convert(sd, tmp_path)
