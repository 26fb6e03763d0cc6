"""Which SAM a state_dict holds, from tensor shapes alone (official names): SAM 1 (``vit_*``) or
SAM 2 / 2.1 (``sam2*_hiera_*``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sam_jax.models import registry
from sam_jax.models.sam.config import CONFIGS, MODEL_TYPES, get_config  # SAM 1 (family "sam") sizes
from sam_jax.models.sam2 import config as sam2_config

PATCH_EMBED = "image_encoder.patch_embed.proj.weight"
_BLOCK = re.compile(r"image_encoder\.blocks\.(\d+)\.")
# SAM 2: the Hiera trunk's patch embedding is (embed_dim, 3, 7, 7).
SAM2_PATCH_EMBED = "image_encoder.trunk.patch_embed.proj.weight"
_SAM2_BLOCK = re.compile(r"image_encoder\.trunk\.blocks\.(\d+)\.")
# Key prefixes only SAM2Base state_dicts have.
SAM2_PREFIXES = ("image_encoder.trunk.", "sam_mask_decoder.", "sam_prompt_encoder.", "memory_attention.")
# Tensors only SAM 2.1 has (``no_obj_embed_spatial`` and the object pointers' temporal projection).
SAM2_1_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")
# Tensors every released SAM 2 / 2.1 file has outside the image model (they tell 2 from 2.1 apart).
_SAM2_VIDEO_KEYS = ("maskmem_tpos_enc", "no_mem_pos_enc")

# Key prefixes of checkpoints that are SAM-like but not SAM, for a useful refusal.
_OTHER_MODELS: tuple[tuple[str, str], ...] = (
    ("memory_attention.", "SAM 2"),
    ("image_encoder.trunk.", "SAM 2 (Hiera image encoder)"),
    ("sam_mask_decoder.", "SAM 2"),
    ("image_encoder.patch_embed.seq.", "MobileSAM (TinyViT image encoder)"),
)


def other_model_hint(keys: Iterable[str]) -> str:
    """``" (this looks like SAM 2)"`` when key names give away a known non-SAM model, else ``""``."""
    keys = list(keys)
    for prefix, name in _OTHER_MODELS:
        if any(k.startswith(prefix) for k in keys):
            return f" (this looks like {name}, which sam_jax does not support)"
    return ""


def _not_sam(state_dict: Mapping[str, Any]) -> ValueError:
    keys = list(state_dict)
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    hint = other_model_hint(keys)
    return ValueError(f"not a SAM checkpoint: no {PATCH_EMBED}{hint}; found {len(keys)} tensors like {shown}")


def encoder_size(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """``(width, depth)`` of the image encoder: ``patch_embed.proj.weight`` is (width, 3, 16, 16)."""
    if PATCH_EMBED not in state_dict:
        raise _not_sam(state_dict)
    width = int(state_dict[PATCH_EMBED].shape[0])
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))}
    return width, len(blocks)


def _sizes(names: Iterable[str]) -> str:
    """``vit_b 768x12, vit_l 1024x24, ...``: width x blocks of each named config."""
    encoders = {n: get_config(n).image_encoder for n in names}
    return ", ".join(f"{n} {e.embed_dim}x{e.depth}" for n, e in encoders.items())


def is_sam2(state_dict: Mapping[str, Any]) -> bool:
    """Whether the key names are ``SAM2Base``'s (a Hiera trunk, ``sam_mask_decoder``, memory modules)."""
    return any(k.startswith(SAM2_PREFIXES) for k in state_dict)


def sam2_trunk_size(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """``(embed_dim, depth)`` of a SAM 2 Hiera trunk (``patch_embed.proj.weight`` is (embed_dim, 3, 7, 7))."""
    weight = state_dict.get(SAM2_PATCH_EMBED)
    width = int(weight.shape[0]) if weight is not None and len(weight.shape) == 4 else 0
    blocks = {int(m.group(1)) for k in state_dict if (m := _SAM2_BLOCK.match(k))}
    return width, len(blocks)


def _trunk_shape(config: sam2_config.Sam2Config) -> tuple[int, int]:
    return config.image_encoder.trunk.embed_dim, config.image_encoder.trunk.depth


def _sam2_sizes() -> str:
    trunks = {n.split("_hiera_")[1]: sam2_config.get_config(n).image_encoder.trunk for n in sam2_config.MODEL_TYPES}
    return ", ".join(f"{n} {t.embed_dim}x{t.depth}" for n, t in trunks.items())


def detect_sam2_model_type(state_dict: Mapping[str, Any]) -> str:
    """``sam2_hiera_*`` or ``sam2.1_hiera_*``: the size from the trunk's width and depth, SAM 2.1 from
    its extra tensors (:data:`SAM2_1_KEYS`). Test configs such as ``sam2_test`` must be named."""
    width, depth = sam2_trunk_size(state_dict)
    sizes = [
        n.split("_hiera_")[1]
        for n in sam2_config.MODEL_TYPES
        if n.startswith("sam2_") and _trunk_shape(sam2_config.get_config(n)) == (width, depth)
    ]
    if not sizes:
        message = (
            f"this looks like SAM 2 (Hiera image encoder), but the trunk is {width} wide with {depth} blocks, "
            f"which matches no released SAM 2 model (width x blocks: {_sam2_sizes()})"
        )
        configs = sam2_config.CONFIGS.items()
        tests = [n for n, c in configs if n not in sam2_config.MODEL_TYPES and _trunk_shape(c) == (width, depth)]
        if tests:
            message += f"; it matches the test config {tests[0]!r}, which must be asked for by name"
        raise ValueError(message)
    if any(k in state_dict for k in SAM2_1_KEYS):
        return f"sam2.1_hiera_{sizes[0]}"
    if all(k in state_dict for k in _SAM2_VIDEO_KEYS):
        return f"sam2_hiera_{sizes[0]}"
    raise ValueError(
        f"this looks like SAM 2 {sizes[0]} (Hiera image encoder), but without the video tensors "
        f"({', '.join(_SAM2_VIDEO_KEYS)}) SAM 2 cannot be told from SAM 2.1: name the model type "
        f"(sam2_hiera_{sizes[0]} or sam2.1_hiera_{sizes[0]}: their image models are the same, "
        "they differ in the video tensors)"
    )


def detect_model_type(state_dict: Mapping[str, Any]) -> str:
    """``vit_b``, ``vit_l`` or ``vit_h``, from the image encoder's width and depth (number of blocks);
    for SAM 2 key names, :func:`detect_sam2_model_type`.

    Only released sizes are detected; test configs such as ``tiny`` must be named explicitly. Raises
    ``ValueError`` for a checkpoint that is not SAM, or a SAM-like encoder of another size.
    """
    if is_sam2(state_dict):
        return detect_sam2_model_type(state_dict)
    width, depth = encoder_size(state_dict)
    for name in MODEL_TYPES:
        enc = get_config(name).image_encoder
        if (enc.embed_dim, enc.depth) == (width, depth):
            return name
    message = (
        f"image encoder is {width} wide with {depth} blocks, which matches no SAM model "
        f"(width x blocks: {_sizes(MODEL_TYPES)}){other_model_hint(state_dict)}"
    )
    tests = [n for n, c in CONFIGS.items() if (c.image_encoder.embed_dim, c.image_encoder.depth) == (width, depth)]
    if tests:
        message += f"; it matches the test config {tests[0]!r}, which must be asked for by name"
    raise ValueError(message)


def check_model_type(state_dict: Mapping[str, Any], model_type: str) -> None:
    """Raise ``ValueError`` naming both sizes if the image encoder is not ``model_type``'s (or the
    checkpoint is of the other family: SAM 1 for a SAM 2 name, or the reverse)."""
    family = registry.family_of(registry.get_config(model_type))
    if family.tag == "sam2" or is_sam2(state_dict):
        _check_sam2_model_type(state_dict, model_type, family.title)
        return
    enc = get_config(model_type).image_encoder
    width, depth = encoder_size(state_dict)
    if (enc.embed_dim, enc.depth) != (width, depth):
        try:
            found = f"SAM {detect_model_type(state_dict)}"
        except ValueError:
            found = "no known SAM"
        raise ValueError(
            f"model type {model_type} expects an image encoder {enc.embed_dim} wide with {enc.depth} blocks, "
            f"but the checkpoint's is {width} wide with {depth} blocks ({found})"
        )


def _check_sam2_model_type(state_dict: Mapping[str, Any], model_type: str, title: str) -> None:
    if not is_sam2(state_dict):
        raise ValueError(f"model type {model_type} is {title}, but the checkpoint is not SAM 2 (no Hiera trunk)")
    if title != "SAM 2":
        raise ValueError(f"model type {model_type} is {title}, but the checkpoint is SAM 2 (Hiera image encoder)")
    trunk = sam2_config.get_config(model_type).image_encoder.trunk
    width, depth = sam2_trunk_size(state_dict)
    if (trunk.embed_dim, trunk.depth) != (width, depth):
        raise ValueError(
            f"model type {model_type} expects a Hiera trunk {trunk.embed_dim} wide with {trunk.depth} blocks, "
            f"but the checkpoint's is {width} wide with {depth} blocks (width x blocks: {_sam2_sizes()})"
        )
