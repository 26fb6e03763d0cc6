"""transformers' ``Sam2Model`` / ``Sam2VideoModel`` names <-> SAM 2's (``SAM2Base``) names: one rule
table, read in both directions.

The Hub's ``facebook/sam2-hiera-*`` and ``facebook/sam2.1-hiera-*`` checkpoints were made by
transformers' ``convert_sam2_to_hf.py`` from Meta's ``.pt`` files; these rules are that script's
renames written as module paths, checked by a strict ``load_state_dict`` into ``Sam2Model`` (image
model) and ``Sam2VideoModel`` (every tensor, all eight released sizes) in
``tests/test_sam2_convert_transformers.py``. As in :mod:`convert.transformers_names` each rule pairs
a SAM 2 module path with transformers' path for the same module, ``{i}``/``{j}`` stand for indices,
the rest of the key is carried over and the first matching rule wins. Layouts are identical (no
transposes; q/k/v stay split in the decoder and fused in Hiera's ``qkv`` on both sides) except for
three things the rules cannot say:

- the four point embeddings, SAM 2's ``sam_prompt_encoder.point_embeddings.{0..3}.weight`` (1, C)
  each, are one (4, C) ``prompt_encoder.point_embed.weight`` in transformers;
- transformers keeps the random-Fourier matrix twice, ``prompt_encoder.shared_embedding.positional_embedding``
  (point PE) and ``shared_image_embedding.positional_embedding`` (image-wide PE), both saved (``Sam2Model``
  ties nothing); SAM 2 has one, ``sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``, so the
  second is dropped after checking it is bit-identical (a checkpoint where they differ is refused);
- the memory encoder's mask downsampler is a flat ``nn.Sequential`` in SAM 2 (``encoder.{3k}`` conv,
  ``encoder.{3k+1}`` LayerNorm2d, GELU, ..., ``encoder.{3L}`` the final 1x1 conv) and ``layers.{k}.conv`` /
  ``layers.{k}.layer_norm`` / ``final_conv`` in transformers, so the rules depend on its depth ``L``, read
  from the state_dict.

The video-only tensors (memory attention/encoder, object pointers, ...) exist only in files saved
from ``Sam2VideoModel``; ``Sam2Model`` has none (transformers' loader skips them), so its files convert
to an image-only directory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

# The rule-template machinery of SAM 1's table, shared.
from sam_jax.convert.transformers_names import compile_rule, drop_duplicates, rename

T = TypeVar("T")

# Every transformers SAM 2 file has its Hiera trunk here (SAM 1's SamModel: ``vision_encoder.layers``).
PREFIX = "vision_encoder.backbone."

# 3-layer MLPs: SAM 2 ``layers.0/1/2``, transformers ``proj_in/layers.0/proj_out``; 2-layer: ``proj_in/proj_out``.
_MLP3 = (("layers.0", "proj_in"), ("layers.1", "layers.0"), ("layers.2", "proj_out"))
_MLP2 = (("layers.0", "proj_in"), ("layers.1", "proj_out"))


def _mlp(official: str, hf: str, layers: tuple[tuple[str, str], ...] = _MLP3) -> tuple[tuple[str, str], ...]:
    return tuple((f"{official}.{a}", f"{hf}.{b}") for a, b in layers)


def _attention(official: str, hf: str) -> tuple[tuple[str, str], ...]:
    """An attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (transformers: ``o_proj``)."""
    return ((f"{official}.out_proj", f"{hf}.o_proj"), (official, hf))


_DEC = "sam_mask_decoder"
_DEC_LAYER = f"{_DEC}.transformer.layers.{{i}}"
_HF_DEC_LAYER = "mask_decoder.transformer.layers.{i}"
_MEM_LAYER = "memory_attention.layers.{i}"
_FUSER = "memory_encoder.fuser.layers.{i}"
_HF_FUSER = "memory_encoder.memory_fuser.layers.{i}"

_RULES: tuple[tuple[str, str], ...] = (
    # Image encoder: Hiera trunk and FPN neck.
    ("image_encoder.trunk.patch_embed.proj", "vision_encoder.backbone.patch_embed.projection"),
    ("image_encoder.trunk.pos_embed", "vision_encoder.backbone.pos_embed"),
    ("image_encoder.trunk.pos_embed_window", "vision_encoder.backbone.pos_embed_window"),
    ("image_encoder.trunk.blocks.{i}.norm{j}", "vision_encoder.backbone.blocks.{i}.layer_norm{j}"),
    ("image_encoder.trunk.blocks.{i}.attn", "vision_encoder.backbone.blocks.{i}.attn"),
    *_mlp("image_encoder.trunk.blocks.{i}.mlp", "vision_encoder.backbone.blocks.{i}.mlp", _MLP2),
    ("image_encoder.trunk.blocks.{i}.proj", "vision_encoder.backbone.blocks.{i}.proj"),
    ("image_encoder.neck.convs.{i}.conv", "vision_encoder.neck.convs.{i}"),
    # Prompt encoder (point embeddings: see the module docstring).
    (
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    ("sam_prompt_encoder.not_a_point_embed", "prompt_encoder.not_a_point_embed"),
    ("sam_prompt_encoder.no_mask_embed", "prompt_encoder.no_mask_embed"),
    ("sam_prompt_encoder.mask_downscaling.0", "prompt_encoder.mask_embed.conv1"),
    ("sam_prompt_encoder.mask_downscaling.1", "prompt_encoder.mask_embed.layer_norm1"),
    ("sam_prompt_encoder.mask_downscaling.3", "prompt_encoder.mask_embed.conv2"),
    ("sam_prompt_encoder.mask_downscaling.4", "prompt_encoder.mask_embed.layer_norm2"),
    ("sam_prompt_encoder.mask_downscaling.6", "prompt_encoder.mask_embed.conv3"),
    # Mask decoder: the two-way transformer renames its LayerNorms, MLPs and output projections.
    (f"{_DEC_LAYER}.norm{{j}}", f"{_HF_DEC_LAYER}.layer_norm{{j}}"),
    *_mlp(f"{_DEC_LAYER}.mlp", f"{_HF_DEC_LAYER}.mlp", _MLP2),
    *_attention(f"{_DEC_LAYER}.self_attn", f"{_HF_DEC_LAYER}.self_attn"),
    *_attention(f"{_DEC_LAYER}.cross_attn_token_to_image", f"{_HF_DEC_LAYER}.cross_attn_token_to_image"),
    *_attention(f"{_DEC_LAYER}.cross_attn_image_to_token", f"{_HF_DEC_LAYER}.cross_attn_image_to_token"),
    *_attention(f"{_DEC}.transformer.final_attn_token_to_image", "mask_decoder.transformer.final_attn_token_to_image"),
    (f"{_DEC}.transformer.norm_final_attn", "mask_decoder.transformer.layer_norm_final_attn"),
    *((f"{_DEC}.{name}", f"mask_decoder.{name}") for name in ("iou_token", "mask_tokens", "obj_score_token")),
    *((f"{_DEC}.{name}", f"mask_decoder.{name}") for name in ("conv_s0", "conv_s1")),
    (f"{_DEC}.output_upscaling.0", "mask_decoder.upscale_conv1"),
    (f"{_DEC}.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    (f"{_DEC}.output_upscaling.3", "mask_decoder.upscale_conv2"),
    *_mlp(f"{_DEC}.output_hypernetworks_mlps.{{i}}", "mask_decoder.output_hypernetworks_mlps.{i}"),
    *_mlp(f"{_DEC}.iou_prediction_head", "mask_decoder.iou_prediction_head"),
    *_mlp(f"{_DEC}.pred_obj_score_head", "mask_decoder.pred_obj_score_head"),
    ("no_mem_embed", "no_memory_embedding"),
    # Video only (Sam2VideoModel): memory attention.
    *_attention(f"{_MEM_LAYER}.self_attn", "memory_attention.layers.{i}.self_attn"),
    *_attention(f"{_MEM_LAYER}.cross_attn_image", "memory_attention.layers.{i}.cross_attn_image"),
    (f"{_MEM_LAYER}.norm{{j}}", "memory_attention.layers.{i}.layer_norm{j}"),
    (f"{_MEM_LAYER}.linear{{j}}", "memory_attention.layers.{i}.linear{j}"),
    ("memory_attention.norm", "memory_attention.layer_norm"),
    # Memory encoder (the mask downsampler's rules: :func:`_downsampler_rules`).
    ("memory_encoder.pix_feat_proj", "memory_encoder.feature_projection"),
    (f"{_FUSER}.gamma", f"{_HF_FUSER}.scale"),
    (f"{_FUSER}.dwconv", f"{_HF_FUSER}.depthwise_conv"),
    (f"{_FUSER}.norm", f"{_HF_FUSER}.layer_norm"),
    (f"{_FUSER}.pwconv{{j}}", f"{_HF_FUSER}.pointwise_conv{{j}}"),
    ("memory_encoder.out_proj", "memory_encoder.projection"),
    # SAM2Base's own video tensors.
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("no_obj_ptr", "no_object_pointer"),
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    *_mlp("obj_ptr_proj", "object_pointer_proj"),
    ("obj_ptr_tpos_proj", "temporal_positional_encoding_projection_layer"),
    ("mask_downsample", "mask_downsample"),
)

# The point embeddings: SAM 2's four (1, C) tensors <-> transformers' one (4, C).
POINT_EMBED = "prompt_encoder.point_embed.weight"
POINT_EMBEDDINGS = "sam_prompt_encoder.point_embeddings.{}.weight"
NUM_POINT_EMBEDDINGS = 4  # positive/negative point, box corners (SAM2Base's PromptEncoder fixes 4)
# transformers-only duplicate -> the tensor it copies (transformers names).
DUPLICATES: dict[str, str] = {
    "shared_image_embedding.positional_embedding": "prompt_encoder.shared_embedding.positional_embedding",
}
_DOWNSAMPLER = "memory_encoder.mask_downsampler."
_OFFICIAL_DOWNSAMPLER = re.compile(re.escape(_DOWNSAMPLER) + r"encoder\.(\d+)\.")
_HF_DOWNSAMPLER = re.compile(re.escape(_DOWNSAMPLER) + r"layers\.(\d+)\.")

_TO_TRANSFORMERS = [(compile_rule(official), hf) for official, hf in _RULES]
_TO_OFFICIAL = [(compile_rule(hf), official) for official, hf in _RULES]


@functools.cache
def _downsampler_rules(depth: int) -> tuple[list[tuple[re.Pattern[str], str]], list[tuple[re.Pattern[str], str]]]:
    """The mask downsampler's ``depth`` conv/norm stages and final conv: compiled rules
    ``(SAM 2 -> transformers, transformers -> SAM 2)``."""
    pairs = []
    for k in range(depth):
        pairs += [
            (f"{_DOWNSAMPLER}encoder.{3 * k}", f"{_DOWNSAMPLER}layers.{k}.conv"),
            (f"{_DOWNSAMPLER}encoder.{3 * k + 1}", f"{_DOWNSAMPLER}layers.{k}.layer_norm"),
        ]
    pairs.append((f"{_DOWNSAMPLER}encoder.{3 * depth}", f"{_DOWNSAMPLER}final_conv"))
    return [(compile_rule(a), b) for a, b in pairs], [(compile_rule(b), a) for a, b in pairs]


def _downsampler_depth(keys: Iterable[str], pattern: re.Pattern[str], per_stage: int) -> int:
    """Stages of the mask downsampler in ``keys``: SAM 2 (``per_stage`` 3) has its final conv at
    ``encoder.{3L}``, so ``L`` is the largest index // 3; transformers (1) counts ``layers.{k}``."""
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if not indices:
        return 0
    return max(indices) // 3 if per_stage == 3 else max(indices) + 1


def official_to_transformers(key: str, downsampler_depth: int = 4) -> str | None:
    """transformers name of a SAM 2 tensor; None if no rule covers it (the point embeddings are
    stacked by :func:`to_transformers`). ``downsampler_depth``: the memory encoder's mask
    downsampler stages (4 in every released model)."""
    if key.startswith(_DOWNSAMPLER):
        return rename(key, _downsampler_rules(downsampler_depth)[0])
    return rename(key, _TO_TRANSFORMERS)


def transformers_to_official(key: str, downsampler_depth: int = 4) -> str | None:
    """SAM 2 name of a transformers ``Sam2Model``/``Sam2VideoModel`` tensor; None if no rule covers it."""
    if key.startswith(_DOWNSAMPLER):
        return rename(key, _downsampler_rules(downsampler_depth)[1])
    return rename(key, _TO_OFFICIAL)


def is_transformers_sam2_layout(keys: Iterable[str]) -> bool:
    """Whether tensor names are transformers' SAM 2 ones (a Hiera trunk under ``vision_encoder.backbone``)."""
    return any(k.startswith(PREFIX) for k in keys)


def from_transformers(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename a transformers ``Sam2Model`` / ``Sam2VideoModel`` state_dict to SAM 2's names.

    Returns the renamed state_dict (tensors are not copied, except the point embeddings, which are
    split) and notes saying what was done. Raises ``ValueError`` for a tensor no rule covers, a
    point-embedding tensor that is not (4, C), or a duplicate (:data:`DUPLICATES`) that differs
    from the tensor it copies. Shapes are otherwise checked later, under SAM 2's names
    (:func:`convert.sam2_rules.check_state_dict`).
    """
    state_dict, notes = drop_duplicates(
        state_dict,
        DUPLICATES,
        "transformers SAM 2 checkpoint",
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    )

    out: dict[str, np.ndarray] = {}
    if POINT_EMBED in state_dict:
        stacked = state_dict.pop(POINT_EMBED)
        if np.ndim(stacked) != 2 or np.shape(stacked)[0] != NUM_POINT_EMBEDDINGS:
            raise ValueError(
                f"transformers SAM 2 checkpoint: {POINT_EMBED} must be ({NUM_POINT_EMBEDDINGS}, C), one row per "
                f"point label (SAM 2's point_embeddings.0-3), got shape {tuple(np.shape(stacked))}"
            )
        for i in range(NUM_POINT_EMBEDDINGS):
            out[POINT_EMBEDDINGS.format(i)] = stacked[i : i + 1]
        notes.append(f"split {POINT_EMBED} into {POINT_EMBEDDINGS.format('0-3')}")

    depth = _downsampler_depth(state_dict, _HF_DOWNSAMPLER, per_stage=1)
    renamed = {key: transformers_to_official(key, depth) for key in state_dict}
    unknown = sorted(key for key, new in renamed.items() if new is None)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"transformers SAM 2 checkpoint holds tensors with no SAM 2 counterpart: {shown}")
    notes.insert(0, f"renamed {len(renamed) + (NUM_POINT_EMBEDDINGS if out else 0)} tensors from transformers names")
    out.update({renamed[key]: value for key, value in state_dict.items()})
    return out, notes


def to_transformers(
    state_dict: Mapping[str, T], stack: Callable[[Sequence[T], int], T] = np.concatenate
) -> dict[str, T]:
    """SAM 2 state_dict -> transformers names, duplicate included: the image model's tensors load into
    ``Sam2Model``, a whole ``SAM2Base`` state_dict into ``Sam2VideoModel``, with ``strict=True``.

    Inverse of :func:`from_transformers`. ``stack`` joins the four (1, C) point embeddings along
    axis 0 (``torch.cat`` for tensors).
    """
    depth = _downsampler_depth(state_dict, _OFFICIAL_DOWNSAMPLER, per_stage=3)
    points = [POINT_EMBEDDINGS.format(i) for i in range(NUM_POINT_EMBEDDINGS)]
    out = {}
    for key, value in state_dict.items():
        if key in points:
            continue
        new = official_to_transformers(key, depth)
        if new is None:
            raise ValueError(f"{key} is not a SAM 2 tensor name")
        out[new] = value
    present = [p for p in points if p in state_dict]
    if present:
        if len(present) != NUM_POINT_EMBEDDINGS:
            raise ValueError(f"SAM 2 state_dict has {present} but not all of {points}")
        out[POINT_EMBED] = stack([state_dict[p] for p in points], 0)
    for duplicate, kept in DUPLICATES.items():
        if kept in out:
            out[duplicate] = out[kept]
    return out
