"""transformers' ``SamModel`` names <-> official SAM names: one rule table, read in both directions.

Each rule pairs an official module path with transformers' path for the same module; ``{i}`` and
``{j}`` stand for layer indices and the rest of the key (``.weight``, ``.bias``, ``.qkv.weight``...)
is carried over unchanged. The first rule that matches wins, so specific rules come before the
general ones below them. Layouts are identical: only names differ.

transformers keeps one tensor twice: the prompt encoder's random-Fourier matrix
(official ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``) is both
``shared_image_embedding.positional_embedding`` (image-wide PE) and, tied to it,
``prompt_encoder.shared_embedding.positional_embedding`` (point PE). The first is kept; the second
is dropped after checking that it is bit-identical (a checkpoint where they differ cannot be
represented by SAM and is refused). ``model.safetensors`` files hold only the first (tied tensors are
saved once); ``torch.save(model.state_dict())`` files hold both.

The 3-layer MLPs (IoU head, hypernetworks) are ``layers.0/1/2`` officially and
``proj_in/layers.0/proj_out`` in transformers: these rules assume depth 3, as every SAM has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np

T = TypeVar("T")

_RULES: tuple[tuple[str, str], ...] = (
    # Image encoder.
    ("image_encoder.patch_embed.proj", "vision_encoder.patch_embed.projection"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm{j}", "vision_encoder.layers.{i}.layer_norm{j}"),
    ("image_encoder.blocks.{i}.attn", "vision_encoder.layers.{i}.attn"),
    ("image_encoder.blocks.{i}.mlp", "vision_encoder.layers.{i}.mlp"),
    ("image_encoder.neck.0", "vision_encoder.neck.conv1"),
    ("image_encoder.neck.1", "vision_encoder.neck.layer_norm1"),
    ("image_encoder.neck.2", "vision_encoder.neck.conv2"),
    ("image_encoder.neck.3", "vision_encoder.neck.layer_norm2"),
    # Prompt encoder.
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "shared_image_embedding.positional_embedding",
    ),
    ("prompt_encoder.point_embeddings.{i}", "prompt_encoder.point_embed.{i}"),
    ("prompt_encoder.not_a_point_embed", "prompt_encoder.not_a_point_embed"),
    ("prompt_encoder.no_mask_embed", "prompt_encoder.no_mask_embed"),
    ("prompt_encoder.mask_downscaling.0", "prompt_encoder.mask_embed.conv1"),
    ("prompt_encoder.mask_downscaling.1", "prompt_encoder.mask_embed.layer_norm1"),
    ("prompt_encoder.mask_downscaling.3", "prompt_encoder.mask_embed.conv2"),
    ("prompt_encoder.mask_downscaling.4", "prompt_encoder.mask_embed.layer_norm2"),
    ("prompt_encoder.mask_downscaling.6", "prompt_encoder.mask_embed.conv3"),
    # Mask decoder: the two-way transformer renames only its LayerNorms.
    ("mask_decoder.transformer.layers.{i}.norm{j}", "mask_decoder.transformer.layers.{i}.layer_norm{j}"),
    ("mask_decoder.transformer.norm_final_attn", "mask_decoder.transformer.layer_norm_final_attn"),
    ("mask_decoder.transformer", "mask_decoder.transformer"),
    ("mask_decoder.iou_token", "mask_decoder.iou_token"),
    ("mask_decoder.mask_tokens", "mask_decoder.mask_tokens"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.0",
        "mask_decoder.output_hypernetworks_mlps.{i}.proj_in",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.1",
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.0",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.2",
        "mask_decoder.output_hypernetworks_mlps.{i}.proj_out",
    ),
    ("mask_decoder.iou_prediction_head.layers.0", "mask_decoder.iou_prediction_head.proj_in"),
    ("mask_decoder.iou_prediction_head.layers.1", "mask_decoder.iou_prediction_head.layers.0"),
    ("mask_decoder.iou_prediction_head.layers.2", "mask_decoder.iou_prediction_head.proj_out"),
)

# transformers-only tensor -> the tensor it duplicates (transformers name).
DUPLICATES: dict[str, str] = {
    "prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding",
}

_FIELD = re.compile(r"\{(\w+)\}")


def compile_rule(template: str) -> re.Pattern[str]:
    """``a.{i}.b`` -> a regex matching the module path ``a.<digits>.b`` and anything below it."""
    parts = _FIELD.split(template)  # literal, field, literal, ...
    body = "".join(re.escape(p) if n % 2 == 0 else rf"(?P<{p}>\d+)" for n, p in enumerate(parts))
    return re.compile(body + r"(?P<rest>\..+)?")


_TO_TRANSFORMERS = [(compile_rule(official), hf) for official, hf in _RULES]
_TO_OFFICIAL = [(compile_rule(hf), official) for official, hf in _RULES]


def rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.fullmatch(key)
        if match:
            fields = match.groupdict()
            rest = fields.pop("rest") or ""
            return template.format(**fields) + rest
    return None


def transformers_to_official(key: str) -> str | None:
    """Official name of a transformers ``SamModel`` tensor; None if no rule covers it."""
    return rename(key, _TO_OFFICIAL)


def official_to_transformers(key: str) -> str | None:
    """transformers ``SamModel`` name of an official SAM tensor; None if no rule covers it."""
    return rename(key, _TO_TRANSFORMERS)


def is_transformers_layout(keys: Iterable[str]) -> bool:
    """Whether tensor names are transformers' (``vision_encoder.*``) rather than official ones."""
    return any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in keys)


def drop_duplicates(
    state_dict: Mapping[str, np.ndarray], duplicates: Mapping[str, str], what: str, single: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """A copy of ``state_dict`` without the second copies transformers saves of a matrix the
    reference holds once (``duplicates``: copy -> kept name; ``single``: the reference's name, for
    the message): each must equal the tensor it copies (or stands in for it when that is absent).
    Returns the state_dict and notes; raises ``ValueError`` naming a copy that differs."""
    state_dict = dict(state_dict)
    notes = []
    for duplicate, kept in duplicates.items():
        if duplicate not in state_dict:
            continue
        copy = state_dict.pop(duplicate)
        if kept not in state_dict:  # saved under the other name of the tied pair
            state_dict[kept] = copy
        elif not np.array_equal(copy, state_dict[kept]):
            raise ValueError(
                f"{what}: {duplicate} differs from {kept}; the reference uses one matrix for both ({single}), "
                "so this cannot be converted"
            )
        else:
            notes.append(f"dropped {duplicate} (identical to {kept})")
    return state_dict, notes


def from_transformers(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename a transformers ``SamModel`` state_dict to official names (tensors are not copied).

    Returns the renamed state_dict and notes saying what was done. Raises ``ValueError`` for a tensor
    no rule covers, or a duplicate (see :data:`DUPLICATES`) that differs from the tensor it copies.
    """
    state_dict, notes = drop_duplicates(
        state_dict, DUPLICATES, "transformers checkpoint", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    )
    renamed = {key: transformers_to_official(key) for key in state_dict}
    unknown = sorted(key for key, new in renamed.items() if new is None)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"transformers checkpoint holds tensors with no SAM counterpart: {shown}")
    notes.insert(0, f"renamed {len(renamed)} tensors from transformers names")
    return {renamed[key]: value for key, value in state_dict.items()}, notes


def to_transformers(state_dict: Mapping[str, T]) -> dict[str, T]:
    """Official-name state_dict -> transformers ``SamModel.state_dict()`` names, duplicate included.

    Inverse of :func:`from_transformers`; the result loads into ``SamModel`` with ``strict=True``.
    """
    out = {}
    for key, value in state_dict.items():
        new = official_to_transformers(key)
        if new is None:
            raise ValueError(f"{key} is not an official SAM tensor name")
        out[new] = value
    for duplicate, kept in DUPLICATES.items():
        if kept in out:
            out[duplicate] = out[kept]
    return out
