"""Checkpoint conversion: official ``.pth``, transformers ``SamModel``, MedSAM-style wrappers, refusals.

Needs the ``reference`` and ``test`` extras (torch, segment-anything, transformers, safetensors).
Full-size files are vit_b only (a vit_l/vit_h round trip costs minutes here); vit_l and vit_h keys and
shapes are checked on state_dicts built on torch's meta device, which allocates nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx
from segment_anything import sam_model_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is imported; nothing here needs the Hub
import transformers

from sam_jax import checkpoint
from sam_jax.build import load_sam
from sam_jax.convert import rules
from sam_jax.convert.command import convert_checkpoint
from sam_jax.convert.detect import detect_model_type
from sam_jax.convert.readers import read_checkpoint
from sam_jax.convert.transformers_names import from_transformers, to_transformers
from sam_jax.models.sam.config import MODEL_TYPES, get_config

from reference_model import build_reference

torch.set_num_threads(2)
TINY = get_config("tiny")


def _numpy(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state_dict.items()}


def _restore(directory: Path, like: dict) -> dict:
    """The parameters written to ``directory``, restored in the structure of ``like``."""
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    return checkpoint.load_params(directory, abstract)


def _assert_identical(got: dict, want: dict) -> None:
    """Same tree, same dtypes, every leaf bit-for-bit equal."""
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(want)
    assert got_tree == want_tree
    for (path, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype == np.float32, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory deleted after the test (pytest keeps tmp_path, and these files are big)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture(scope="module")
def vit_b() -> Iterator[tuple[dict[str, torch.Tensor], Path, Path]]:
    """Reference vit_b with random weights (pos_embed and rel_pos_* included), saved as official
    files are (``torch.save(model.state_dict())``), and its conversion: ``(state_dict, pth, out_dir)``."""
    with tempfile.TemporaryDirectory() as d:
        state_dict = build_reference("vit_b", seed=1).state_dict()
        pth = Path(d) / "sam_vit_b.pth"
        torch.save(state_dict, pth)
        yield state_dict, pth, convert_checkpoint(pth, Path(d) / "sam_vit_b")


@pytest.fixture(scope="module")
def tiny() -> tuple[dict[str, torch.Tensor], dict]:
    """Reference ``tiny`` state_dict (random weights) and its direct conversion by the rule table."""
    state_dict = build_reference("tiny", seed=1).state_dict()
    return state_dict, rules.to_params(_numpy(state_dict), TINY)


def _meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The reference's state_dict for ``name`` on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return sam_model_registry[name]().state_dict()


def _hf_config(name: str) -> transformers.SamConfig:
    """transformers' config for one of our configs (``SamConfig()`` itself is vit_b)."""
    cfg = get_config(name)
    enc, pe, dec = cfg.image_encoder, cfg.prompt_encoder, cfg.mask_decoder
    return transformers.SamConfig(
        vision_config=dict(
            hidden_size=enc.embed_dim,
            num_hidden_layers=enc.depth,
            num_attention_heads=enc.num_heads,
            image_size=enc.img_size,
            window_size=enc.window_size,
            global_attn_indexes=list(enc.global_attn_indexes),
            output_channels=enc.out_chans,
            num_pos_feats=pe.embed_dim // 2,
        ),
        prompt_encoder_config=dict(
            hidden_size=pe.embed_dim, image_size=pe.input_image_size, mask_input_channels=pe.mask_in_chans
        ),
        mask_decoder_config=dict(
            hidden_size=dec.transformer_dim,
            mlp_dim=dec.transformer_mlp_dim,
            num_hidden_layers=dec.transformer_depth,
            num_attention_heads=dec.transformer_num_heads,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
    )


# --- official checkpoints ---------------------------------------------------------------------------


def test_official_vit_b_round_trip(vit_b):
    state_dict, _, out = vit_b
    model = load_sam(out)
    assert model.config == get_config("vit_b")
    back = rules.to_state_dict(nnx.to_pure_dict(nnx.state(model)), model.config)
    assert set(back) == set(state_dict)
    for key, tensor in state_dict.items():
        np.testing.assert_array_equal(back[key], tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_detects_every_size_and_accepts_its_keys(name):
    state_dict = _meta_state_dict(name)
    assert detect_model_type(state_dict) == name
    rules.check_state_dict(state_dict, get_config(name))  # raises on any key or shape difference


def test_bf16_and_fp16_become_float32(tiny, scratch):
    state_dict, _ = tiny
    for dtype in (torch.bfloat16, torch.float16):
        low = {k: v.to(dtype) for k, v in state_dict.items()}
        torch.save(low, scratch / "low.pth")
        got, source = read_checkpoint(scratch / "low.pth")
        assert f"converted {len(low)} {str(dtype).removeprefix('torch.')} tensors to float32" in source
        for key, tensor in low.items():
            assert got[key].dtype == np.float32
            np.testing.assert_array_equal(got[key], tensor.float().numpy(), err_msg=key)


def test_normalisation_buffers_are_checked_and_dropped(tiny, scratch):
    state_dict, direct = tiny
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    torch.save({**state_dict, "pixel_mean": mean.view(3, 1, 1), "pixel_std": std.view(3, 1, 1)}, scratch / "a.pth")
    out = convert_checkpoint(scratch / "a.pth", scratch / "a", model_type="tiny")
    _assert_identical(_restore(out, direct), direct)

    torch.save({**state_dict, "pixel_mean": mean / 255, "pixel_std": std / 255}, scratch / "b.pth")
    with pytest.raises(ValueError, match=r"pixel_mean is \[0\.48.*SAM normalises images with pixel_mean"):
        read_checkpoint(scratch / "b.pth")


# --- transformers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_transformers_names_cover_sammodel_exactly(name):
    with torch.device("meta"):
        hf_keys = set(transformers.SamModel(_hf_config(name)).state_dict())
    official = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in _meta_state_dict(name).items()}
    assert set(to_transformers(official)) == hf_keys
    back, _ = from_transformers(to_transformers(official))
    assert set(back) == set(official)


@torch.no_grad()
def test_transformers_names_mean_the_same_tensors():
    """Load one set of weights into transformers' SamModel through the name table and into the
    reference directly: same outputs (up to transformers' LayerNorm eps 1e-6 where the reference's
    two-way transformer uses 1e-5), for prompts that use every embedding (points, padding point, box,
    mask, no mask). A swap of two same-shaped tensors moves the masks by about 0.3."""
    ref = build_reference("tiny", seed=1)
    hf = transformers.SamModel(_hf_config("tiny")).eval()
    hf.load_state_dict(to_transformers(ref.state_dict()), strict=True)

    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, TINY.img_size, TINY.img_size, generator=gen)
    mask = torch.randn(1, 1, 40, 40, generator=gen)
    points, labels = torch.tensor([[[30.0, 40.0], [100.0, 120.0]]]), torch.tensor([[1, 0]])
    box = torch.tensor([[20.0, 30.0, 110.0, 140.0]])

    embedding = ref.image_encoder(image)
    hf_embedding = hf.get_image_embeddings(image)
    np.testing.assert_allclose(hf_embedding.numpy(), embedding.numpy(), atol=1e-5, rtol=0)
    for box_and_mask in (True, False):
        sparse, dense = ref.prompt_encoder(
            points=(points, labels), boxes=box if box_and_mask else None, masks=mask if box_and_mask else None
        )
        masks, iou = ref.mask_decoder(embedding, ref.prompt_encoder.get_dense_pe(), sparse, dense, True)
        out = hf(
            image_embeddings=hf_embedding,
            input_points=points[:, None],
            input_labels=labels[:, None],
            input_boxes=box[:, None] if box_and_mask else None,
            input_masks=mask if box_and_mask else None,
            multimask_output=True,
        )
        np.testing.assert_allclose(out.pred_masks[:, 0].numpy(), masks.numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(out.iou_scores[:, 0].numpy(), iou.numpy(), atol=1e-4, rtol=0)


def test_transformers_files_convert_like_the_official_one(vit_b, scratch, capsys):
    """The reference's weights, moved into transformers' SamModel by the name table and saved both
    ways transformers checkpoints exist, convert to exactly what the official .pth converts to."""
    state_dict, _, official_out = vit_b
    expected = _restore(official_out, rules.to_params(_numpy(state_dict), get_config("vit_b")))
    hf = transformers.SamModel(transformers.SamConfig())
    hf.load_state_dict(to_transformers(state_dict), strict=True)
    hf.save_pretrained(scratch / "hf")  # model.safetensors: the tied positional embedding once
    (scratch / "bin").mkdir()
    torch.save(hf.state_dict(), scratch / "bin" / "pytorch_model.bin")  # both copies
    capsys.readouterr()

    out = convert_checkpoint(scratch / "hf", scratch / "from_safetensors")
    summary = capsys.readouterr().out
    assert "safetensors file, transformers SamModel names; read model.safetensors from the directory" in summary
    _assert_identical(_restore(out, expected), expected)

    out = convert_checkpoint(scratch / "bin" / "pytorch_model.bin", scratch / "from_bin")
    assert "dropped prompt_encoder.shared_embedding.positional_embedding" in capsys.readouterr().out
    _assert_identical(_restore(out, expected), expected)


def test_safetensors_need_no_torch(tiny, scratch, monkeypatch):
    state_dict, _ = tiny
    hf = transformers.SamModel(_hf_config("tiny"))
    hf.load_state_dict(to_transformers(state_dict), strict=True)
    hf.save_pretrained(scratch / "hf")
    torch.save(state_dict, scratch / "sam.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails

    got, _ = read_checkpoint(scratch / "hf")
    assert set(got) == set(state_dict)
    for key, tensor in state_dict.items():
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)
    with pytest.raises(ModuleNotFoundError, match=r"sam\.pth needs torch .*model\.safetensors files can be read"):
        read_checkpoint(scratch / "sam.pth")


def test_transformers_duplicate_must_match(tiny, scratch):
    state_dict, _ = tiny
    hf = to_transformers(state_dict)
    hf["prompt_encoder.shared_embedding.positional_embedding"] = hf["shared_image_embedding.positional_embedding"] + 1
    torch.save(hf, scratch / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"shared_embedding\.positional_embedding differs from shared_image_embedding"):
        read_checkpoint(scratch / "pytorch_model.bin")


# --- MedSAM and other training checkpoints ----------------------------------------------------------

_WRAPPERS = {
    "plain": (lambda sd: sd, []),
    "model": (
        lambda sd: {"model": sd, "epoch": 3, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}},
        ["took checkpoint['model'], ignoring epoch, optimizer"],
    ),
    "state_dict+module": (
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        ["took checkpoint['state_dict']", "stripped the prefix 'module.'"],
    ),
    "module+sam": (lambda sd: {f"module.sam.{k}": v for k, v in sd.items()}, ["'module.'", "'sam.'"]),
}


@pytest.mark.parametrize("wrapper", list(_WRAPPERS))
def test_training_checkpoints_convert_identically(wrapper, tiny, scratch, capsys):
    state_dict, direct = tiny
    wrap, notes = _WRAPPERS[wrapper]
    torch.save(wrap(state_dict), scratch / "medsam.pth")
    out = convert_checkpoint(scratch / "medsam.pth", scratch / "out", model_type="tiny")
    summary = capsys.readouterr().out
    for note in notes:
        assert note in summary
    _assert_identical(_restore(out, direct), direct)


# --- refusals ----------------------------------------------------------------------------------------


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_refuses_truncated_files(tiny, scratch):
    state_dict, _ = tiny
    torch.save(state_dict, scratch / "zip.pth")
    torch.save(state_dict, scratch / "legacy.pth", _use_new_zipfile_serialization=False)
    transformers.SamModel(_hf_config("tiny")).save_pretrained(scratch / "hf")
    for path in (scratch / "zip.pth", scratch / "legacy.pth", scratch / "hf" / "model.safetensors"):
        _cut_in_half(path)
        with pytest.raises(
            ValueError,
            match=rf"{re.escape(str(path))} is truncated or corrupt: expected a (PyTorch|safetensors)",
        ):
            convert_checkpoint(path, scratch / "out", model_type="tiny")
    assert not (scratch / "out").exists()


def test_refuses_other_models(scratch):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), scratch / "resnet18.pth")
    with pytest.raises(ValueError, match=r"not a SAM checkpoint: no image_encoder\.patch_embed\.proj\.weight; "):
        convert_checkpoint(scratch / "resnet18.pth", scratch / "out")

    sam2_like = {
        "image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1),
        "memory_attention.x": torch.zeros(1),
    }
    torch.save({"model": sam2_like}, scratch / "sam2.pt")
    with pytest.raises(ValueError, match=r"this looks like SAM 2"):
        convert_checkpoint(scratch / "sam2.pt", scratch / "out")


def test_refuses_pickled_objects(tiny, scratch):
    torch.save({"model": tiny[0], "args": argparse.Namespace(lr=1e-4)}, scratch / "train.pth")
    with pytest.raises(ValueError, match="holds pickled Python objects besides tensors"):
        read_checkpoint(scratch / "train.pth")


def test_refuses_files_that_are_not_checkpoints(scratch):
    (scratch / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.txt is not a checkpoint: expected a PyTorch file"):
        read_checkpoint(scratch / "notes.txt")
    (scratch / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=r"is a directory without model\.safetensors or pytorch_model\.bin"):
        read_checkpoint(scratch / "empty_dir")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth: no such checkpoint"):
        read_checkpoint(scratch / "missing.pth")


def _without(sd: dict, key: str) -> dict:
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: _without(sd, "mask_decoder.iou_token.weight"),
            r"missing \(1\):\n  mask_decoder\.iou_token\.weight",
        ),
        (
            lambda sd: {**sd, "mask_decoder.hf_token.weight": torch.zeros(1, 256)},
            r"unexpected \(1\):\n  mask_decoder\.hf_token\.weight",
        ),
        (
            lambda sd: {**sd, "mask_decoder.iou_token.weight": torch.zeros(1, 255)},
            r"wrong shape \(1\):\n  mask_decoder\.iou_token\.weight: expected \(1, 256\), got \(1, 255\)",
        ),
    ],
    ids=["missing", "extra", "wrong_shape"],
)
def test_refuses_state_dicts_that_do_not_fit(edit, message, vit_b, scratch):
    torch.save(edit(vit_b[0]), scratch / "edited.pth")
    with pytest.raises(ValueError, match=rf"edited\.pth .*does not match SAM vit_b[^\n]*\n(.*\n)*{message}"):
        convert_checkpoint(scratch / "edited.pth", scratch / "out")
    assert not (scratch / "out").exists()


def test_refuses_a_model_type_that_contradicts_the_shapes(vit_b, tiny, scratch):
    with pytest.raises(
        ValueError,
        match=r"model type vit_l expects an image encoder 1024 wide with 24 blocks, "
        r"but the checkpoint's is 768 wide with 12 blocks \(SAM vit_b\)",
    ):
        convert_checkpoint(vit_b[1], scratch / "out", model_type="vit_l")
    torch.save(tiny[0], scratch / "tiny.pth")
    with pytest.raises(ValueError, match=r"48 wide with 2 blocks, which matches no SAM model .*test config 'tiny'"):
        convert_checkpoint(scratch / "tiny.pth", scratch / "out")


def test_refuses_to_overwrite_without_force(tiny, scratch):
    state_dict, direct = tiny
    torch.save(state_dict, scratch / "tiny.pth")
    convert_checkpoint(scratch / "tiny.pth", scratch / "out", model_type="tiny")
    with pytest.raises(FileExistsError, match="already holds a sam_jax checkpoint; pass --force"):
        convert_checkpoint(scratch / "tiny.pth", scratch / "out", model_type="tiny")
    out = convert_checkpoint(scratch / "tiny.pth", scratch / "out", model_type="tiny", force=True)
    _assert_identical(_restore(out, direct), direct)
