"""Which SAM a state_dict holds, from tensor shapes alone (official names)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sam_jax.models.sam.config import CONFIGS, MODEL_TYPES, get_config  # SAM 1 (family "sam") sizes

PATCH_EMBED = "image_encoder.patch_embed.proj.weight"
_BLOCK = re.compile(r"image_encoder\.blocks\.(\d+)\.")

# Key prefixes of checkpoints that are SAM-like but not SAM, for a useful refusal.
_OTHER_MODELS: tuple[tuple[str, str], ...] = (
    ("memory_attention.", "SAM 2"),
    ("image_encoder.trunk.", "SAM 2 (Hiera image encoder)"),
    ("sam_mask_decoder.", "SAM 2"),
    ("image_encoder.patch_embed.seq.", "MobileSAM (TinyViT image encoder)"),
    ("vision_encoder.backbone.", "transformers Sam2Model (SAM 2)"),
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


def detect_model_type(state_dict: Mapping[str, Any]) -> str:
    """``vit_b``, ``vit_l`` or ``vit_h``, from the image encoder's width and depth (number of blocks).

    Only released sizes are detected; test configs such as ``tiny`` must be named explicitly. Raises
    ``ValueError`` for a checkpoint that is not SAM, or a SAM-like encoder of another size.
    """
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
    """Raise ``ValueError`` naming both sizes if the image encoder is not ``model_type``'s."""
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
