"""What SAM 2's video model adds to the image model (:class:`~sam_jax.models.sam2.model.Sam2`):
the memory modules and the tensors ``SAM2Base`` owns for tracking (reference
``sam2/modeling/sam2_base.py``).

Attribute names are ``SAM2Base``'s, so the converter's ``video.safetensors`` (the official names of
every video-only tensor) maps onto :class:`Sam2VideoParts` by rule
(:mod:`sam_jax.convert.sam2_video_rules`):

- ``memory_attention``, ``memory_encoder``: :mod:`.memory_attention`, :mod:`.memory_encoder`;
- ``maskmem_tpos_enc`` ``(num_maskmem, 1, 1, mem_dim)``: temporal encoding of the memory frames;
- ``no_mem_pos_enc`` ``(1, 1, hidden_dim)``: position of the dummy memory token (used only without
  ``directly_add_no_mem_embed``, which every released config sets);
- with ``use_obj_ptrs_in_encoder``: ``mask_downsample`` (a 4x4 stride-4 conv turning a mask prompt
  into SAM's low-res logit scale) and ``obj_ptr_proj`` (an MLP of 3 layers, or one Linear) turning
  the decoder's output token into an object pointer; with ``pred_obj_scores`` as well, ``no_obj_ptr``
  ``(1, hidden_dim)``, the pointer of a frame where the object is absent;
- ``no_obj_embed_spatial`` ``(1, mem_dim)`` (SAM 2.1): added to the memory of such a frame;
- ``obj_ptr_tpos_proj`` (SAM 2.1, ``proj_tpos_enc_in_obj_ptrs``): Linear ``hidden_dim -> mem_dim`` of
  the pointers' temporal sine encoding.

``no_mem_embed`` stays with the image model (the image predictor adds it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from sam_jax.models.layers import MLP
from sam_jax.models.sam2.config import Sam2Config
from sam_jax.models.sam2.memory_attention import MemoryAttention
from sam_jax.models.sam2.memory_encoder import MemoryEncoder
from sam_jax.ops.policy import XLA, ExecutionPolicy


def _trunc_normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float = 0.02) -> nnx.Param:
    """``trunc_normal_(zeros(shape), std)`` (the reference truncates at +-2, absolute, i.e. 100 std)."""
    return nnx.Param(std * jax.random.truncated_normal(rngs.params(), -2.0 / std, 2.0 / std, shape))


class Sam2VideoParts(nnx.Module):
    """The video-only modules and tensors of ``SAM2Base``, under its names (see the module doc)."""

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs) -> None:
        self.config = config
        hidden, mem = config.hidden_dim, config.mem_dim
        self.memory_attention = MemoryAttention(config.memory_attention, rngs=rngs)
        self.memory_encoder = MemoryEncoder(config.memory_encoder, rngs=rngs)
        self.maskmem_tpos_enc = _trunc_normal(rngs, (config.num_maskmem, 1, 1, mem))
        self.no_mem_pos_enc = _trunc_normal(rngs, (1, 1, hidden))
        ptrs = config.use_obj_ptrs_in_encoder
        if config.fixed_no_obj_ptr and not (ptrs and config.pred_obj_scores):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder (SAM2Base asserts)")
        self.mask_downsample = nnx.Conv(1, 1, (4, 4), strides=(4, 4), padding="VALID", rngs=rngs) if ptrs else None
        if not ptrs:
            self.obj_ptr_proj = None
        elif config.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(hidden, hidden, hidden, 3, rngs=rngs)
        else:
            self.obj_ptr_proj = nnx.Linear(hidden, hidden, rngs=rngs)
        self.no_obj_ptr = _trunc_normal(rngs, (1, hidden)) if ptrs and config.pred_obj_scores else None
        self.no_obj_embed_spatial = _trunc_normal(rngs, (1, mem)) if config.no_obj_embed_spatial else None
        if config.proj_tpos_enc_in_obj_ptrs and not config.add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs (as SAM2Base asserts)")
        self.obj_ptr_tpos_proj = nnx.Linear(hidden, mem, rngs=rngs) if config.proj_tpos_enc_in_obj_ptrs else None

    def project_obj_ptr(self, tokens: jax.Array) -> jax.Array:
        """``obj_ptr_proj`` (``nn.Identity`` without ``use_obj_ptrs_in_encoder``): ``(..., C) -> (..., C)``."""
        return tokens if self.obj_ptr_proj is None else self.obj_ptr_proj(tokens)

    def project_tpos(self, enc: jax.Array) -> jax.Array:
        """``obj_ptr_tpos_proj`` (``nn.Identity`` without ``proj_tpos_enc_in_obj_ptrs``)."""
        return enc if self.obj_ptr_tpos_proj is None else self.obj_ptr_tpos_proj(enc)


def build_video_parts(config: Sam2Config, rngs: nnx.Rngs) -> Sam2VideoParts:
    """Random-weight video parts of ``config`` (under ``nnx.eval_shape``: the abstract ones)."""
    return Sam2VideoParts(config, rngs=rngs)


def non_overlapping(masks: Float[Array, "B H W 1"]) -> Float[Array, "B H W 1"]:
    """``_apply_non_overlapping_constraints``: at each pixel only the highest-scoring object keeps its
    logit; the others are clamped to at most -10 (ties go to the first object, as ``argmax``)."""
    if masks.shape[0] == 1:
        return masks
    keep = jnp.argmax(masks, axis=0)[None] == jnp.arange(masks.shape[0])[:, None, None, None]
    return jnp.where(keep, masks, jnp.minimum(masks, -10.0))


def encode_new_memory(
    parts: Sam2VideoParts,
    pix_feat: Float[Array, "B H W C"],
    pred_masks_high_res: Float[Array, "B S S 1"],
    object_score_logits: Float[Array, "B 1"],
    is_mask_from_pts: bool | Bool[Array, ""],
    binarize: bool | None = None,
) -> tuple[Float[Array, "B H W D"], Float[Array, "B H W D"]]:
    """``SAM2Base._encode_new_memory`` (evaluation): a frame's memory ``(maskmem_features,
    maskmem_pos_enc)`` from its stride-16 features and predicted high-res mask logits.

    The logits become ``sigmoid`` probabilities (hard 0/1 where ``binarize_mask_from_pts_for_mem_enc``
    and the mask came from clicks; ``is_mask_from_pts`` may be traced), scaled and shifted
    (``sigmoid_scale/bias_for_mem_enc``) before the memory encoder; with ``no_obj_embed_spatial``
    (SAM 2.1) frames whose object score is not positive get that embedding added everywhere.
    ``binarize`` overrides the config's ``binarize_mask_from_pts_for_mem_enc`` (``SAM2VideoPredictor``
    is built with it on, ``build_sam2`` with it off).
    """
    cfg = parts.config
    if binarize is None:
        binarize = cfg.binarize_mask_from_pts_for_mem_enc
    if cfg.non_overlap_masks_for_mem_enc:
        pred_masks_high_res = non_overlapping(pred_masks_high_res)
    mask = jax.nn.sigmoid(pred_masks_high_res)
    if binarize:
        mask = jnp.where(is_mask_from_pts, (pred_masks_high_res > 0).astype(mask.dtype), mask)
    mask = mask * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
    feats, pos = parts.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
    if parts.no_obj_embed_spatial is not None:
        absent = (object_score_logits <= 0).astype(feats.dtype)  # 1 - (score > 0)
        feats = feats + absent[:, None, None, :] * parts.no_obj_embed_spatial[...][0]
    return feats, pos


# --------------------------------------------------------------------------- memory conditioning
#
# The memory a frame attends to is chosen on the host (which earlier frames, as the reference's
# Python does) and handed to the jitted step as a fixed-size bank: ``F`` frame slots and ``P``
# pointer slots with validity masks, so every frame reuses one compiled program. Key order does not
# change attention (RoPE rotates each memory frame by its own grid), so slots may be in any order.


@dataclasses.dataclass(frozen=True)
class MemorySelection:
    """What ``_prepare_memory_conditioned_features`` picks for one frame (host side).

    ``frames``: ``(kind, frame index, t_pos)`` of each spatial memory (``kind`` is ``"cond"`` or
    ``"non_cond"``: which output dict holds it; ``t_pos`` 0 for conditioning frames, else
    ``1 .. num_maskmem - 1``, the latest frame highest); ``ptrs``: ``(kind, frame index, temporal
    position)`` of each object pointer; ``t_diff_max``: the pointers' normaliser
    (``min(num_frames, max_obj_ptrs_in_encoder) - 1``).
    """

    frames: tuple[tuple[str, int, int], ...]
    ptrs: tuple[tuple[str, int, int], ...]
    t_diff_max: int


def select_closest_cond_frames(frame_idx: int, cond_frames: Collection[int], max_cond_frame_num: int) -> list[int]:
    """``sam2_utils.select_closest_cond_frames``: the conditioning frames attended to (in the
    reference's insertion order): all, or the closest before, the closest at/after, then the
    temporally closest others up to ``max_cond_frame_num``."""
    cond = list(cond_frames)
    if max_cond_frame_num == -1 or len(cond) <= max_cond_frame_num:
        return cond
    if max_cond_frame_num < 2:
        raise ValueError(f"max_cond_frames_in_attn must be -1 or at least 2, got {max_cond_frame_num}")
    selected = []
    before = max((t for t in cond if t < frame_idx), default=None)
    if before is not None:
        selected.append(before)
    after = min((t for t in cond if t >= frame_idx), default=None)
    if after is not None:
        selected.append(after)
    rest = sorted((t for t in cond if t not in selected), key=lambda x: abs(x - frame_idx))
    return selected + rest[: max_cond_frame_num - len(selected)]


def select_memory(
    config: Sam2Config,
    frame_idx: int,
    cond_frames: Collection[int],
    non_cond_frames: Collection[int],
    num_frames: int,
    track_in_reverse: bool = False,
) -> MemorySelection:
    """The memory of a frame that is not an initial conditioning frame, chosen as
    ``SAM2Base._prepare_memory_conditioned_features`` chooses it at evaluation (memory temporal stride,
    ``max_cond_frames_in_attn``, pointers only from the past, signed or absolute temporal positions)."""
    if not cond_frames:
        raise ValueError("tracking needs at least one conditioning frame (a prompted frame) in the memory")
    cfg = config
    selected = select_closest_cond_frames(frame_idx, cond_frames, cfg.max_cond_frames_in_attn)
    unselected = {t for t in cond_frames if t not in selected}
    non_cond = set(non_cond_frames)

    def lookup(t: int) -> str | None:
        return "non_cond" if t in non_cond else "cond" if t in unselected else None

    frames = [("cond", t, 0) for t in selected]
    stride = cfg.memory_temporal_stride_for_eval
    for t_pos in range(1, cfg.num_maskmem):
        t_rel = cfg.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx + t_rel if track_in_reverse else frame_idx - t_rel
        elif not track_in_reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        kind = lookup(prev)
        if kind is not None:
            frames.append((kind, prev, t_pos))
    ptrs: list[tuple[str, int, int]] = []
    t_diff_max = 0
    if cfg.use_obj_ptrs_in_encoder:
        max_ptrs = min(num_frames, cfg.max_obj_ptrs_in_encoder)
        t_diff_max = max_ptrs - 1
        sign = -1 if track_in_reverse else 1
        for t in selected:
            if cfg.only_obj_ptrs_in_the_past_for_eval and (t < frame_idx if track_in_reverse else t > frame_idx):
                continue
            ptrs.append(
                ("cond", t, (frame_idx - t) * sign if cfg.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t))
            )
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
            if t < 0 or t >= num_frames:
                break
            kind = lookup(t)
            if kind is not None:
                ptrs.append((kind, t, t_diff))
    return MemorySelection(tuple(frames), tuple(ptrs), t_diff_max)


def memory_bank_slots(config: Sam2Config, cond_slots: int) -> tuple[int, int]:
    """``(F, P)``: frame and pointer slots of a bank holding up to ``cond_slots`` conditioning frames."""
    return cond_slots + config.num_maskmem - 1, cond_slots + config.max_obj_ptrs_in_encoder - 1


def stack_memory_bank(
    config: Sam2Config,
    selection: MemorySelection,
    outputs: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]],
    cond_slots: int,
) -> dict[str, np.ndarray]:
    """The fixed-size bank of a :class:`MemorySelection` (NumPy, channels-last):

    - ``maskmem_features``, ``maskmem_pos_enc`` ``(F, B, H, W, mem_dim)``; ``t_pos`` ``(F,)`` int32;
      ``frame_valid`` ``(F,)``;
    - ``obj_ptr`` ``(P, B, C)``; ``ptr_tpos`` ``(P,)`` float32; ``ptr_valid`` ``(P,)``;
      ``ptr_t_diff_max`` ``()`` float32.

    ``outputs["cond"]`` / ``outputs["non_cond"]`` map frame indices to per-frame outputs holding
    ``maskmem_features``, ``maskmem_pos_enc`` ``(B, H, W, mem_dim)`` and ``obj_ptr`` ``(B, C)``.
    """
    f_slots, p_slots = memory_bank_slots(config, cond_slots)
    if len(selection.frames) > f_slots or len(selection.ptrs) > p_slots:
        raise ValueError(
            f"{len(selection.frames)} memory frames / {len(selection.ptrs)} pointers do not fit a bank of "
            f"{f_slots} / {p_slots} slots ({cond_slots} conditioning frames): raise cond_slots"
        )
    get = lambda kind, t, key: np.asarray(outputs[kind][t][key], np.float32)
    kind, t, _ = selection.frames[0]
    feats = get(kind, t, "maskmem_features")
    bank = {
        "maskmem_features": np.zeros((f_slots, *feats.shape), np.float32),
        "maskmem_pos_enc": np.zeros((f_slots, *feats.shape), np.float32),
        "t_pos": np.zeros(f_slots, np.int32),
        "frame_valid": np.zeros(f_slots, bool),
        "obj_ptr": np.zeros((p_slots, feats.shape[0], config.hidden_dim), np.float32),
        "ptr_tpos": np.zeros(p_slots, np.float32),
        "ptr_valid": np.zeros(p_slots, bool),
        "ptr_t_diff_max": np.float32(max(selection.t_diff_max, 1)),
    }
    for i, (kind, t, t_pos) in enumerate(selection.frames):
        bank["maskmem_features"][i] = get(kind, t, "maskmem_features")
        bank["maskmem_pos_enc"][i] = get(kind, t, "maskmem_pos_enc")
        bank["t_pos"][i], bank["frame_valid"][i] = t_pos, True
    for i, (kind, t, tpos) in enumerate(selection.ptrs):
        bank["obj_ptr"][i] = get(kind, t, "obj_ptr")
        bank["ptr_tpos"][i], bank["ptr_valid"][i] = tpos, True
    return bank


def sine_pe_1d(pos: Float[Array, " P"], dim: int, temperature: float = 10000.0) -> Float[Array, "P D"]:
    """``sam2_utils.get_1d_sine_pe``: ``[sin(pos / dim_t), cos(pos / dim_t)]``, ``dim_t`` as float32 torch
    computes it (the exact power, rounded)."""
    half = dim // 2
    dim_t = np.power(np.float64(temperature), (2 * (np.arange(half) // 2) / half).astype(np.float32).astype(np.float64))
    x = pos[:, None] / jnp.asarray(dim_t.astype(np.float32))
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def prepare_memory_conditioned_features(
    parts: Sam2VideoParts,
    curr: Float[Array, "B H W C"],
    curr_pos: Float[Array, "B H W C"],
    bank: dict,
    policy: ExecutionPolicy = XLA,
) -> Float[Array, "B H W C"]:
    """``SAM2Base._prepare_memory_conditioned_features`` for a frame that is not an initial
    conditioning frame: the stride-16 features ``curr`` (and their sine encoding) attend to the
    bank's valid frames (position: spatial encoding + ``maskmem_tpos_enc[num_maskmem - t_pos - 1]``)
    and pointers (split into ``C / mem_dim`` tokens; position: the projected sine encoding of
    ``ptr_tpos / ptr_t_diff_max``, or zero). Initial conditioning frames take ``curr + no_mem_embed``
    (``directly_add_no_mem_embed``) and no memory: that is the image model's ``embed``."""
    cfg = parts.config
    b, h, w, c = curr.shape
    mem = cfg.mem_dim
    feats, pos = bank["maskmem_features"], bank["maskmem_pos_enc"]
    f = feats.shape[0]
    tpos_enc = parts.maskmem_tpos_enc[...][cfg.num_maskmem - bank["t_pos"] - 1]  # (F, 1, 1, mem)
    pos = pos + tpos_enc[:, None]
    to_tokens = lambda x: x.transpose(1, 0, 2, 3, 4).reshape(b, f * h * w, mem)
    memory, memory_pos = [to_tokens(feats)], [to_tokens(pos)]
    valid = [jnp.repeat(bank["frame_valid"], h * w)]
    num_ptr_tokens = 0
    if cfg.use_obj_ptrs_in_encoder:
        ptrs = bank["obj_ptr"]  # (P, B, C)
        p = ptrs.shape[0]
        if cfg.add_tpos_enc_to_obj_ptrs:
            tpos_dim = c if cfg.proj_tpos_enc_in_obj_ptrs else mem
            obj_pos = parts.project_tpos(sine_pe_1d(bank["ptr_tpos"] / bank["ptr_t_diff_max"], tpos_dim))
        else:
            obj_pos = jnp.zeros((p, mem), ptrs.dtype)
        split = c // mem
        # (P, B, C) -> (P, split, B, mem) -> P * split tokens, pointer-major (the reference's permute).
        ptr_tokens = ptrs.reshape(p, b, split, mem).transpose(0, 2, 1, 3).reshape(p * split, b, mem)
        memory.append(ptr_tokens.transpose(1, 0, 2))
        memory_pos.append(jnp.broadcast_to(jnp.repeat(obj_pos, split, axis=0)[None], (b, p * split, mem)))
        valid.append(jnp.repeat(bank["ptr_valid"], split))
        num_ptr_tokens = p * split
    memory_valid = jnp.broadcast_to(jnp.concatenate(valid)[None], (b, sum(v.shape[0] for v in valid)))
    out = parts.memory_attention(
        curr.reshape(b, h * w, c),
        jnp.concatenate(memory, axis=1),
        curr_pos.reshape(b, h * w, c),
        jnp.concatenate(memory_pos, axis=1),
        num_obj_ptr_tokens=num_ptr_tokens,
        memory_valid=memory_valid,
        policy=policy,
    )
    return out.reshape(b, h, w, c)
