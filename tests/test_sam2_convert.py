"""SAM 2 / 2.1 checkpoint conversion: official ``{"model": state_dict}`` ``.pt`` files -> sam_jax
directories that ``sam_jax.load_sam`` reads, size/version detection, strict refusals.

Files are written with torch into a temporary directory from random weights (never committed).
Detection and strictness for the eight released models are checked on shapes taken from the
reference built on torch's meta device (:func:`sam2_reference.build_from_yaml`), which allocates
nothing; the full-size hiera_tiny file round trip is in ``test_sam2_predictor_live.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from sam_jax.build import load_sam, save_sam
from sam_jax.convert import sam2_rules
from sam_jax.convert.command import convert_checkpoint
from sam_jax.convert.detect import check_model_type, detect_model_type
from sam_jax.convert.rules import ConversionError
from sam_jax.models.sam2.config import MODEL_TYPES, get_config
from sam_jax.models.sam2.model import Sam2

torch.set_num_threads(2)
TEST = get_config("sam2_test")
# Stand-ins for the memory modules (not ported yet; the converter keeps their tensors as they are).
MEMORY = {
    "memory_attention.norm.weight": (32,),
    "memory_encoder.pix_feat_proj.weight": (32, 32, 1, 1),
}


def _random(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def _test_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A whole SAM2Base state_dict of ``sam2_test`` (image model + video tensors + memory stand-ins)."""
    shapes = {**sam2_rules.expected_shapes(TEST), **sam2_rules.expected_video_shapes(TEST, 32), **MEMORY}
    return _random(shapes, seed)


def _save_pt(state_dict: dict[str, np.ndarray], path: Path) -> Path:
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, path)
    return path


def _shapes_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Arrays of the given shapes that take no memory (zero strides)."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def released_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    pytest.importorskip("sam2")
    import sam2_reference

    out = {}
    for name in MODEL_TYPES:
        ref = sam2_reference.build_from_yaml(name, device="meta")
        out[name] = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    return out


# --------------------------------------------------------------------------- round trip


def test_convert_writes_a_directory_load_sam_reads(tmp_path):
    sd = _test_state_dict()
    path = _save_pt(sd, tmp_path / "sam2_test.pt")
    out = convert_checkpoint(path, tmp_path / "out", model_type="sam2_test")

    meta = json.loads((out / "config.json").read_text())
    assert meta["family"] == "sam2" and meta["config"]["name"] == "sam2_test"
    model = load_sam(out)
    assert isinstance(model, Sam2) and model.config == TEST
    # Every image-model tensor comes back in the official layout, bit for bit.
    back = sam2_rules.to_state_dict(nnx.to_pure_dict(nnx.state(model)), TEST)
    image, video = sam2_rules.split_state_dict(sd)
    assert back.keys() == image.keys()
    for k in image:
        np.testing.assert_array_equal(back[k], image[k], err_msg=k)
    np.testing.assert_array_equal(np.asarray(model.no_mem_embed[...]), sd["no_mem_embed"])
    # The video-only tensors are kept as they are beside the parameters.
    from safetensors.numpy import load_file

    kept = load_file(str(out / sam2_rules.VIDEO_FILE))
    assert kept.keys() == video.keys()
    assert all(np.array_equal(kept[k], video[k]) for k in video)

    # save_sam / load_sam round trip of the loaded model.
    save_sam(model, tmp_path / "again")
    again = load_sam(tmp_path / "again")
    leaves = lambda m: jax.tree.leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m))))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(model), leaves(again), strict=True))

    # --force over an existing directory, and a second conversion without it is refused.
    with pytest.raises(FileExistsError, match="pass --force"):
        convert_checkpoint(path, out, model_type="sam2_test")
    convert_checkpoint(path, out, model_type="sam2_test", force=True)


# --------------------------------------------------------------------------- detection


def test_detects_every_released_model_from_shapes(released_shapes):
    for name, shapes in released_shapes.items():
        sd = _shapes_only(shapes)
        assert detect_model_type(sd) == name
        check_model_type(sd, name)
        cfg = get_config(name)
        sam2_rules.check_state_dict(sd, cfg)
        sam2_rules.check_video_state_dict(sd, cfg)


def test_wrong_size_or_version_is_named(released_shapes):
    tiny21 = _shapes_only(released_shapes["sam2.1_hiera_tiny"])
    with pytest.raises(ValueError, match=r"expects a Hiera trunk 96 wide with 16 blocks, .* 96 wide with 12 blocks"):
        check_model_type(tiny21, "sam2.1_hiera_small")
    # SAM 2.1's extra video tensors make a SAM 2 name fail, listing them.
    with pytest.raises(ConversionError) as err:
        sam2_rules.check_video_state_dict(tiny21, get_config("sam2_hiera_tiny"), source="t.pt")
    msg = str(err.value)
    assert "t.pt does not match SAM 2 sam2_hiera_tiny's video (memory) tensors" in msg
    assert "unexpected (3):\n  no_obj_embed_spatial\n  obj_ptr_tpos_proj.bias\n  obj_ptr_tpos_proj.weight" in msg
    # ... and the reverse: a SAM 2 file named as 2.1 misses them.
    tiny2 = _shapes_only(released_shapes["sam2_hiera_tiny"])
    with pytest.raises(ConversionError, match=r"missing \(3\):\n  no_obj_embed_spatial"):
        sam2_rules.check_video_state_dict(tiny2, get_config("sam2.1_hiera_tiny"))
    # A SAM 1 name for a SAM 2 file and the reverse.
    with pytest.raises(ValueError, match=r"model type vit_b is SAM, but the checkpoint is SAM 2"):
        check_model_type(tiny21, "vit_b")
    with pytest.raises(ValueError, match=r"model type sam2_hiera_tiny is SAM 2, but the checkpoint is not SAM 2"):
        check_model_type({"image_encoder.patch_embed.proj.weight": np.zeros((768, 3, 16, 16))}, "sam2_hiera_tiny")


def test_image_model_alone_cannot_be_told_2_from_2_1(released_shapes):
    image, _ = sam2_rules.split_state_dict(_shapes_only(released_shapes["sam2.1_hiera_base_plus"]))
    with pytest.raises(ValueError, match=r"SAM 2 cannot be told from SAM 2.1: name the model type"):
        detect_model_type(image)


def test_test_configs_must_be_named():
    with pytest.raises(ValueError, match=r"matches the test config 'sam2_test', which must be asked for by name"):
        detect_model_type(_test_state_dict())


# --------------------------------------------------------------------------- refusals through the command


def test_refuses_missing_unexpected_and_misshaped_tensors(tmp_path):
    sd = _test_state_dict()
    del sd["image_encoder.trunk.blocks.0.attn.qkv.bias"]
    sd["sam_mask_decoder.mask_tokens.weight"] = np.zeros((5, 32), np.float32)
    sd["sam_mask_decoder.surprise"] = np.zeros((2,), np.float32)
    path = _save_pt(sd, tmp_path / "bad.pt")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(path, tmp_path / "out", model_type="sam2_test")
    msg = str(err.value)
    assert f"{path} (PyTorch file" in msg and "does not match SAM 2 sam2_test" in msg
    assert "missing (1):\n  image_encoder.trunk.blocks.0.attn.qkv.bias" in msg
    assert "unexpected (1):\n  sam_mask_decoder.surprise" in msg
    assert "sam_mask_decoder.mask_tokens.weight: expected (4, 32), got (5, 32)" in msg
    assert not (tmp_path / "out").exists()


def test_refuses_missing_video_tensors(tmp_path):
    sd = _test_state_dict()
    del sd["maskmem_tpos_enc"]
    del sd["memory_encoder.pix_feat_proj.weight"]
    sd["no_mem_pos_enc"] = np.zeros((1, 1, 31), np.float32)
    path = _save_pt(sd, tmp_path / "bad.pt")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(path, tmp_path / "out", model_type="sam2_test")
    msg = str(err.value)
    assert "missing (2):\n  maskmem_tpos_enc\n  memory_encoder.* (no tensor of the memory_encoder)" in msg
    assert "no_mem_pos_enc: expected (1, 1, 32), got (1, 1, 31)" in msg


def test_malformed_sam2_file_is_named(tmp_path):
    path = _save_pt({"image_encoder.trunk.patch_embed.proj.weight": np.zeros(1, np.float32)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=re.escape("this looks like SAM 2 (Hiera image encoder), but the trunk is 0")):
        convert_checkpoint(path, tmp_path / "out")


def test_transformers_sam2_layout_is_read(tmp_path):
    """transformers' names of the same state_dict (a Sam2VideoModel file: every tensor) convert to the
    same parameters and video tensors; the Sam2Model checks are in test_sam2_convert_transformers.py."""
    from safetensors.numpy import load_file, save_file

    from sam_jax.convert.sam2_transformers import to_transformers

    sd = _test_state_dict()
    (tmp_path / "hf").mkdir()
    save_file(to_transformers(sd), str(tmp_path / "hf" / "model.safetensors"))
    out = convert_checkpoint(tmp_path / "hf", tmp_path / "out", model_type="sam2_test")
    back = sam2_rules.to_state_dict(nnx.to_pure_dict(nnx.state(load_sam(out))), TEST)
    image, video = sam2_rules.split_state_dict(sd)
    assert back.keys() == image.keys() and all(np.array_equal(back[k], image[k]) for k in image)
    kept = load_file(str(out / sam2_rules.VIDEO_FILE))
    assert kept.keys() == video.keys() and all(np.array_equal(kept[k], video[k]) for k in video)
