"""The video step of the core: one frame of SAM 2 tracking for every object of a video at once.

``SAM2Base.track_step`` (reference ``sam2/modeling/sam2_base.py``) as jitted pure functions of
``(params, inputs)``. The object axis is the batch: each object has its own memory (the reference
tracks objects independently, one at a time), so every per-object computation is written for one
object and ``vmap``-ed, and the inputs split over devices along that axis. The memory an object
attends to arrives as a fixed-size bank (:func:`stack_banks`: ``F`` frame slots and ``P`` pointer
slots with validity masks, chosen on the host by
:func:`~sam_jax.models.sam2.video_model.select_memory`), so every propagated frame reuses one
compiled program.

Three modes (static), as ``_track_step`` branches:

- ``"memory"``: the frame's stride-16 features attend to the bank (memory attention), then the SAM
  heads (points, a previous mask as dense prompt);
- ``"init"``: an initial conditioning frame: the features plus ``no_mem_embed``, then the SAM heads;
- ``"mask"``: a mask prompt used as the output (``_use_mask_as_output``): the mask scaled to
  logits +-10, its object pointer from the SAM heads fed the downsampled mask.

Every mode gives the object pointer and object score (``_forward_sam_heads``' occlusion logic:
masks of absent objects set to ``NO_OBJ_SCORE``, pointers blended with ``no_obj_ptr``) and, with
``run_mem_encoder``, the frame's new memory (rounded to bfloat16, as the reference stores it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.core.prompts import Prompts
from sam_jax.core.resize import Resize, resize
from sam_jax.models.sam2.config import Sam2Config
from sam_jax.models.sam2.model import HIGH_RES_FEATS, Sam2
from sam_jax.models.sam2.transforms import antialias_resize_taps
from sam_jax.models.sam2.video_model import (
    MemorySelection,
    Sam2VideoParts,
    encode_new_memory,
    prepare_memory_conditioned_features,
    stack_memory_bank,
)
from sam_jax.ops.policy import XLA, ExecutionPolicy

# sam2_base.NO_OBJ_SCORE: the logit of every pixel of an object predicted absent (and of objects
# without an output on a frame).
NO_OBJ_SCORE = -1024.0
# _use_mask_as_output: a binary mask prompt becomes logits mask * 20 - 10.
MASK_OUT_SCALE, MASK_OUT_BIAS = 20.0, -10.0
MODES = ("memory", "init", "mask")
# Bank fields with a leading object axis; the others are shared by all objects.
PER_OBJECT_BANK = ("maskmem_features", "t_pos", "frame_valid", "obj_ptr", "ptr_tpos", "ptr_valid")

VISION_FEATS, VISION_POS = "vision_feats", "vision_pos"


class VideoModel(nnx.Module):
    """SAM 2's image model and its video parts, split and jitted as one (``image``, ``video``)."""

    def __init__(self, image: Sam2, video: Sam2VideoParts) -> None:
        if image.config.name != video.config.name:
            raise ValueError(f"image model {image.config.name!r} and video parts {video.config.name!r} differ")
        self.image = image
        self.video = video

    @property
    def config(self):
        return self.image.config

    @property
    def prompt_encoder(self):
        """The prompt encoder under the name the family-agnostic core uses (``dense_pe``)."""
        return self.image.sam_prompt_encoder


class TrackInputs(NamedTuple):
    """Per-object inputs of one step (leading axis ``B``, the objects).

    ``prompts``: points (box corners as labels 2 / 3, then clicks, then the reference's padding
    point) and, as ``mask_input``, a previous low-res mask fed to the decoder
    (``prev_sam_mask_logits``); ``multimask``: ``_use_multimask`` per object;
    ``is_mask_from_pts``: the memory encoder binarises these masks; ``masks``: ``(B, S, S)`` 0/1
    mask prompts for mode ``"mask"`` (else None).
    """

    prompts: Prompts
    multimask: Bool[Array, " B"]
    is_mask_from_pts: Bool[Array, " B"]
    masks: Float[Array, "B S S"] | None = None


class TrackOutput(NamedTuple):
    """What one step gives per object (leading ``B``).

    ``pred_masks`` ``(B, m, m)`` low-res logits of the chosen mask; ``iou`` ``(B,)``;
    ``object_score_logits`` ``(B, 1)``; ``obj_ptr`` ``(B, C)``; with ``run_mem_encoder``,
    ``maskmem_features`` ``(B, h, w, mem_dim)`` bfloat16 and ``maskmem_pos_enc`` ``(h, w, mem_dim)``
    (the same for every frame and object), else None.
    """

    pred_masks: Float[Array, "B m m"]
    iou: Float[Array, " B"]
    object_score_logits: Float[Array, "B 1"]
    obj_ptr: Float[Array, "B C"]
    maskmem_features: jax.Array | None
    maskmem_pos_enc: jax.Array | None


# --------------------------------------------------------------------------- frames


def frame_features(model: Sam2, frames: Float[Array, "B S S 3"], policy: ExecutionPolicy = XLA) -> dict:
    """``forward_image`` + ``_prepare_backbone_features`` of normalised frames: the stride-16
    features (without ``no_mem_embed``) ``vision_feats`` ``(B, g, g, C)``, their sine encoding
    ``vision_pos``, and the decoder's projected high-res levels ``high_res_feats_0/1``."""
    cfg = model.config
    out = model.forward_image(frames, policy)
    fpn = out["backbone_fpn"][-cfg.num_feature_levels :]
    pos = out["vision_pos_enc"][-cfg.num_feature_levels :]
    feats = {VISION_FEATS: fpn[-1], VISION_POS: pos[-1]}
    for name, level in zip(HIGH_RES_FEATS, fpn[:-1], strict=False):
        feats[name] = level
    return feats


@functools.partial(jax.jit, static_argnums=(0, 3), static_argnames=("policy",))
def encode_frames(
    graphdef: nnx.GraphDef, params: nnx.State, frames: Float[Array, "B S S 3"], policy: ExecutionPolicy = XLA
) -> dict:
    """:func:`frame_features` of a :class:`VideoModel` split into ``graphdef`` / ``params``."""
    return frame_features(nnx.merge(graphdef, params).image, frames, policy)


# --------------------------------------------------------------------------- the SAM heads


def _blend_no_obj_ptr(parts: Sam2VideoParts, ptr: jax.Array, appearing: jax.Array, score: jax.Array) -> jax.Array:
    """``_forward_sam_heads``' occlusion handling of the pointer (hard, or soft with
    ``soft_no_obj_ptr``; scaled by it first with ``fixed_no_obj_ptr``)."""
    cfg = parts.config
    lam = jax.nn.sigmoid(score) if cfg.soft_no_obj_ptr else appearing.astype(ptr.dtype)
    if cfg.fixed_no_obj_ptr:
        ptr = lam * ptr
    return ptr + (1 - lam) * parts.no_obj_ptr[...]


def sam_heads(
    model: Sam2,
    parts: Sam2VideoParts,
    pix_feat: Float[Array, "B g g C"],
    high_res: tuple[jax.Array, jax.Array] | None,
    prompts: Prompts,
    multimask: Bool[Array, " B"],
) -> tuple[Float[Array, "B m m"], Float[Array, " B"], Float[Array, "B C"], Float[Array, "B 1"]]:
    """``SAM2Base._forward_sam_heads`` for ``B`` objects, each on its own features:
    ``(low_res_masks, iou, obj_ptr, object_score_logits)``.

    ``multimask`` is per object (traced): the best of the three multimask outputs by predicted
    IoU (and its token for the pointer with ``use_multimask_token_for_obj_ptr``), or the
    single-mask output (with dynamic multimask via stability) and token 0.
    """
    dec = model.sam_mask_decoder
    sparse, valid, dense = model.sam_prompt_encoder(*prompts)
    image_pe = model.sam_prompt_encoder.get_dense_pe()[None]
    masks, ious, tokens, score = dec.predict_masks(pix_feat, image_pe, sparse, dense, high_res, valid)
    multi_masks, multi_ious = masks[:, 1:], ious[:, 1:]
    if dec.cfg.dynamic_multimask_via_stability:
        one_mask, one_iou = dec.dynamic_multimask_via_stability(masks, ious)
    else:
        one_mask, one_iou = masks[:, :1], ious[:, :1]
    appearing = score > 0
    if dec.cfg.pred_obj_scores:
        # Masks for spatial memory are a hard choice between object and no object.
        multi_masks = jnp.where(appearing[:, :, None, None], multi_masks, NO_OBJ_SCORE)
        one_mask = jnp.where(appearing[:, :, None, None], one_mask, NO_OBJ_SCORE)
    best = jnp.argmax(multi_ious, axis=-1)  # first on ties, as torch.argmax
    multi_mask = jnp.take_along_axis(multi_masks, best[:, None, None, None], axis=1)[:, 0]
    multi_iou = jnp.take_along_axis(multi_ious, best[:, None], axis=1)[:, 0]
    token = tokens[:, 0]
    multi_token = token
    if dec.cfg.use_multimask_token_for_obj_ptr:
        multi_token = jnp.take_along_axis(tokens[:, 1:], best[:, None, None], axis=1)[:, 0]
    low_res = jnp.where(multimask[:, None, None], multi_mask, one_mask[:, 0])
    iou = jnp.where(multimask, multi_iou, one_iou[:, 0])
    ptr = parts.project_obj_ptr(jnp.where(multimask[:, None], multi_token, token))
    if dec.cfg.pred_obj_scores and parts.no_obj_ptr is not None:
        ptr = _blend_no_obj_ptr(parts, ptr, appearing, score)
    return low_res, iou, ptr, score


@functools.lru_cache(maxsize=8)
def antialias_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float32 matrix of ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=True)`` along one axis (:func:`antialias_resize_taps`)."""
    starts, weights = antialias_resize_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    for i, (s, w) in enumerate(zip(starts, weights, strict=True)):
        k = min(len(w), in_size - int(s))
        m[i, s : s + k] = w[:k]
    return m


def mask_as_output(
    model: Sam2,
    parts: Sam2VideoParts,
    pix_feat: Float[Array, "B g g C"],
    high_res: tuple[jax.Array, jax.Array] | None,
    masks: Float[Array, "B S S"],
) -> tuple[Float[Array, "B m m"], Float[Array, " B"], Float[Array, "B C"], Float[Array, "B 1"], Float[Array, "B S S"]]:
    """``SAM2Base._use_mask_as_output``: a 0/1 mask prompt as logits +-10 (low-res: antialiased
    downsampling by 4), IoU 1, an object score of +-10 from whether the mask is empty, and the
    pointer of the SAM heads fed the mask through ``mask_downsample`` (no memory, no
    ``no_mem_embed``). Returns ``(low_res, iou, obj_ptr, object_score_logits, high_res_masks)``."""
    b, s = masks.shape[0], masks.shape[-1]
    high = masks * MASK_OUT_SCALE + MASK_OUT_BIAS
    a = jnp.asarray(antialias_matrix(s, s // 4))
    low = jnp.einsum("ih,bhw->biw", a, jnp.einsum("jw,bhw->bhj", a, high))  # width first, as ATen
    if parts.mask_downsample is None:
        ptr = jnp.zeros((b, parts.config.hidden_dim), masks.dtype)
    else:
        # No points: the reference's (0, 0) point labelled -1, and its padding point.
        prompts = Prompts(
            coords=jnp.zeros((b, 2, 2), masks.dtype),
            labels=jnp.full((b, 2), -1, jnp.int32),
            point_valid=jnp.ones((b, 2), bool),
            boxes=None,
            box_valid=None,
            mask_input=parts.mask_downsample(masks[..., None])[..., 0],
            mask_valid=jnp.ones((b,), bool),
        )
        _, _, ptr, _ = sam_heads(model, parts, pix_feat, high_res, prompts, jnp.zeros((b,), bool))
    appearing = jnp.any(masks.reshape(b, -1) > 0, axis=1)[:, None]
    score = MASK_OUT_SCALE * appearing.astype(masks.dtype) + MASK_OUT_BIAS
    if model.sam_mask_decoder.cfg.pred_obj_scores and parts.no_obj_ptr is not None:
        lam = appearing.astype(ptr.dtype)
        if parts.config.fixed_no_obj_ptr:
            ptr = lam * ptr
        ptr = ptr + (1 - lam) * parts.no_obj_ptr[...]
    return low, jnp.ones((b,), masks.dtype), ptr, score, high


# --------------------------------------------------------------------------- memory


def condition_on_memory(
    parts: Sam2VideoParts, features: dict, bank: Mapping[str, jax.Array], policy: ExecutionPolicy = XLA
) -> Float[Array, "B g g C"]:
    """Each object's view of the frame: the stride-16 features after memory attention to that
    object's bank (``_prepare_memory_conditioned_features`` written for one object, ``vmap``-ed; with a
    blocked policy on one device, a CPU, mapped over the objects in turn instead)."""
    curr, pos = features[VISION_FEATS], features[VISION_POS]
    mem_pos = bank["maskmem_pos_enc"]

    def one(obj: dict) -> jax.Array:
        f = obj["maskmem_features"].shape[0]
        single = {
            "maskmem_features": obj["maskmem_features"][:, None].astype(curr.dtype),
            "maskmem_pos_enc": jnp.broadcast_to(mem_pos[None, None], (f, 1, *mem_pos.shape)),
            "t_pos": obj["t_pos"],
            "frame_valid": obj["frame_valid"],
            "obj_ptr": obj["obj_ptr"][:, None],
            "ptr_tpos": obj["ptr_tpos"],
            "ptr_valid": obj["ptr_valid"],
            "ptr_t_diff_max": bank["ptr_t_diff_max"],
        }
        return prepare_memory_conditioned_features(parts, curr[None], pos[None], single, policy)[0]

    per_object = {k: bank[k] for k in PER_OBJECT_BANK}
    if policy.blocked and policy.devices == 1:
        # Blocked attention (CPUs) sizes its steps for one object's scores; vmap would multiply
        # every step's working set by the objects (out of cache): one object after another.
        return jax.lax.map(one, per_object)
    return jax.vmap(one)(per_object)


def upsample_masks(low_res: Float[Array, "B m m"], size: int) -> Float[Array, "B S S"]:
    """Low-res logits to the model's input size (``F.interpolate`` bilinear, no antialias)."""
    r = Resize.direct(low_res.shape[-1], (size, size))
    return jax.vmap(lambda x: resize(x, r))(low_res)


def new_memory(
    parts: Sam2VideoParts,
    vision_feats: Float[Array, "g g C"],
    high_res_masks: Float[Array, "B S S"],
    object_score_logits: Float[Array, "B 1"],
    is_mask_from_pts: Bool[Array, " B"],
    binarize: bool | None = None,
) -> tuple[jax.Array, Float[Array, "h w D"]]:
    """``_encode_new_memory`` per object (so ``non_overlap_masks_for_mem_enc`` sees one object,
    as in the reference's per-object tracking): bfloat16 features ``(B, h, w, mem_dim)`` (the
    reference stores ``maskmem_features.to(torch.bfloat16)``) and the position encoding."""

    def one(mask: jax.Array, score: jax.Array, from_pts: jax.Array) -> tuple[jax.Array, jax.Array]:
        feats, pos = encode_new_memory(
            parts, vision_feats[None], mask[None, ..., None], score[None], from_pts, binarize
        )
        return feats[0], pos[0]

    feats, pos = jax.vmap(one)(high_res_masks, object_score_logits, is_mask_from_pts)
    return feats.astype(jnp.bfloat16), pos[0]


# --------------------------------------------------------------------------- the step


def _track_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    bank: Mapping[str, jax.Array] | None,
    features: dict,
    inputs: TrackInputs,
    mode: str,
    run_mem_encoder: bool,
    binarize: bool | None,
    policy: ExecutionPolicy,
) -> TrackOutput:
    vm = nnx.merge(graphdef, params)
    model, parts = vm.image, vm.video
    cfg = model.config
    b = inputs.multimask.shape[0]
    vis = features[VISION_FEATS]
    pix_raw = jnp.broadcast_to(vis[None], (b, *vis.shape))
    high_res = None
    if cfg.use_high_res_features_in_sam:
        high_res = tuple(jnp.broadcast_to(features[k][None], (b, *features[k].shape)) for k in HIGH_RES_FEATS)
    high = None
    if mode == "mask":
        if inputs.masks is None:
            raise ValueError("mode 'mask' needs inputs.masks (B, S, S)")
        low, iou, ptr, score, high = mask_as_output(model, parts, pix_raw, high_res, inputs.masks)
    else:
        if mode == "memory":
            if bank is None:
                raise ValueError("mode 'memory' needs a memory bank")
            pix = condition_on_memory(parts, features, bank, policy)
        elif mode == "init":
            pix = pix_raw + model.no_mem_embed[...].reshape(-1)  # directly_add_no_mem_embed
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        low, iou, ptr, score = sam_heads(model, parts, pix, high_res, inputs.prompts, inputs.multimask)
    mem_feats = mem_pos = None
    if run_mem_encoder:
        if high is None:
            high = upsample_masks(low, cfg.image_size)
        mem_feats, mem_pos = new_memory(parts, vis, high, score, inputs.is_mask_from_pts, binarize)
    return TrackOutput(low, iou, score, ptr, mem_feats, mem_pos)


track_step = jax.jit(
    _track_step,
    static_argnums=(0, 5, 6, 7, 8),
    static_argnames=("mode", "run_mem_encoder", "binarize", "policy"),
)
track_step.__doc__ = """One frame of tracking for ``B`` objects (``SAM2Base.track_step`` at evaluation).

Args:
  graphdef, params: a :class:`VideoModel` split (``graphdef`` static).
  bank: :func:`stack_banks`' fixed-size memory (mode ``"memory"``; None otherwise).
  features: one frame's :func:`frame_features` without the batch axis.
  inputs: :class:`TrackInputs` (leading ``B``).
  mode: ``"memory"``, ``"init"`` or ``"mask"`` (static; see the module docstring).
  run_mem_encoder: also encode the frame's new memory from the predicted mask (static).
  binarize: ``binarize_mask_from_pts_for_mem_enc`` (None: the config's).
  policy: how the heavy operations run (:mod:`sam_jax.ops`).

Returns a :class:`TrackOutput`.
"""


def _encode_memory(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    features: dict,
    pred_masks: Float[Array, "B m m"],
    object_score_logits: Float[Array, "B 1"],
    is_mask_from_pts: Bool[Array, " B"],
    binarize: bool | None,
) -> tuple[jax.Array, jax.Array]:
    vm = nnx.merge(graphdef, params)
    high = upsample_masks(pred_masks, vm.config.image_size)
    return new_memory(vm.video, features[VISION_FEATS], high, object_score_logits, is_mask_from_pts, binarize)


encode_memory = jax.jit(_encode_memory, static_argnums=(0, 6), static_argnames=("binarize",))
encode_memory.__doc__ = """``SAM2VideoPredictor._run_memory_encoder``: the memory of ``B`` objects'
low-res masks ``(B, m, m)`` on one frame (upsampled bilinearly to the input size first):
bfloat16 ``(B, h, w, mem_dim)`` features and the ``(h, w, mem_dim)`` position encoding."""


# --------------------------------------------------------------------------- the bank (host)


def stack_banks(
    config: Sam2Config,
    selections: Sequence[MemorySelection],
    outputs: Sequence[Mapping[str, Mapping[int, Mapping[str, np.ndarray]]]],
    cond_slots: int,
    maskmem_pos_enc: np.ndarray,
) -> dict[str, np.ndarray]:
    """The bank of ``B`` objects for :func:`track_step`: each object's
    :func:`~sam_jax.models.sam2.video_model.stack_memory_bank` (its own selection and outputs,
    batch 1) stacked object-first, plus the shared ``maskmem_pos_enc`` ``(h, w, mem_dim)`` and
    ``ptr_t_diff_max``:

    ``maskmem_features`` ``(B, F, h, w, mem_dim)``, ``t_pos`` / ``frame_valid`` ``(B, F)``,
    ``obj_ptr`` ``(B, P, C)``, ``ptr_tpos`` / ``ptr_valid`` ``(B, P)``.
    """
    if len(selections) != len(outputs) or not selections:
        raise ValueError(f"one selection per object's outputs expected, got {len(selections)} and {len(outputs)}")
    banks = [stack_memory_bank(config, s, o, cond_slots) for s, o in zip(selections, outputs, strict=True)]
    diff_max = {float(bk["ptr_t_diff_max"]) for bk in banks}
    if len(diff_max) != 1:
        raise ValueError(f"objects of one video share the pointer normaliser, got {sorted(diff_max)}")
    out = {
        "maskmem_features": np.stack([bk["maskmem_features"][:, 0] for bk in banks]),
        "obj_ptr": np.stack([bk["obj_ptr"][:, 0] for bk in banks]),
        **{k: np.stack([bk[k] for bk in banks]) for k in ("t_pos", "frame_valid", "ptr_tpos", "ptr_valid")},
        "maskmem_pos_enc": np.asarray(maskmem_pos_enc, np.float32).reshape(banks[0]["maskmem_features"].shape[2:]),
        "ptr_t_diff_max": banks[0]["ptr_t_diff_max"],
    }
    return out
