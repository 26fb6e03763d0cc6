"""``SAM2VideoPredictor``: SAM 2's interactive video API as host bookkeeping over :mod:`sam_jax.core.track`.

Same names, arguments, state keys and semantics as ``sam2.sam2_video_predictor.SAM2VideoPredictor``
(``sam2`` 1.1.0): an inference state dict per video, objects tracked independently with their own
conditioning / non-conditioning outputs, clicks and masks kept in temporary outputs until
``propagate_in_video`` consolidates them (encoding their memory), objects addable after tracking
started, prompts removable per frame and objects removable. What differs: every frame runs ALL the
objects that need it in one jitted step (the reference loops over objects), with each object's
memory handed over as a fixed-size bank, so propagation reuses one compiled program; the object
axis is split over the mesh's devices. Masks come back as NumPy arrays ``(num_objects, 1, H, W)``
of logits (the reference returns torch tensors of the same shape).

The video predictor's settings are ``build_sam2_video_predictor``'s: ``fill_hole_area=8`` (holes
of at most 8 low-res pixels in predicted masks filled with logit 0.1, 8-connected; the reference
needs its CUDA extension for that and silently skips it without) and the memory encoder binarising
masks from clicks (``binarize_mask_from_pts_for_mem_enc=True``).
"""

from __future__ import annotations

import collections
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sam_jax.core.decode import postprocess
from sam_jax.core.prompts import check_box, check_points, drop_absent, make_prompts, point_bucket, pow2_at_least
from sam_jax.core.resize import Resize
from sam_jax.core.track import (
    NO_OBJ_SCORE,
    PER_OBJECT_BANK,
    TrackInputs,
    VideoModel,
    encode_frames,
    encode_memory,
    stack_banks,
    track_step,
)
from sam_jax.models.sam2.config import Sam2Config
from sam_jax.models.sam2.model import Sam2
from sam_jax.models.sam2.transforms import _resize_axis
from sam_jax.models.sam2.video_model import Sam2VideoParts, non_overlapping, select_memory
from sam_jax.predictors.base import PredictorBase
from sam_jax.predictors.sam2 import SAM2_LABELS, _small_components
from sam_jax.runtime import sharding

COND, NON_COND = "cond_frame_outputs", "non_cond_frame_outputs"
# SAM2VideoPredictor clamps a previous mask fed back with new clicks.
PREV_MASK_CLAMP = 32.0
# fill_holes_in_mask_scores gives filled holes this logit.
HOLE_FILL_LOGIT = 0.1
# Frames whose features are kept (the reference keeps the last one; two serve a click followed by
# the propagation that starts there).
FEATURE_CACHE_SIZE = 2
# track_stream's num_frames when the stream's length is unknown (longer than any pointer window).
STREAM_UNKNOWN_LENGTH = 2**62
VideoMasks = tuple[int, list, np.ndarray]


class _StreamFrame(Sequence):
    """``state["images"]`` of :meth:`SAM2VideoPredictor.track_stream`: only the frame being tracked
    (its ``(S, S, 3)`` model input); asking for another raises ``ValueError``."""

    def __init__(self, num_frames: int) -> None:
        self._num_frames = num_frames
        self._index, self._frame = -1, None

    def hold(self, frame_idx: int, frame: np.ndarray) -> None:
        self._index, self._frame = frame_idx, frame

    def __len__(self) -> int:
        return self._num_frames

    def __getitem__(self, frame_idx):  # type: ignore[override]
        if frame_idx != self._index:
            raise ValueError(f"a stream holds only its current frame ({self._index}), frame {frame_idx} was asked for")
        return self._frame


def stream_bytes_per_object(config: Sam2Config, num_cond_frames: int = 1) -> int:
    """The most host memory (array bytes) :meth:`SAM2VideoPredictor.track_stream` keeps per object,
    from the bank sizes of ``config``: ``F`` memory frames of bfloat16 features
    ``(image_size / backbone_stride)^2 * mem_dim * 2`` bytes, ``F = min(num_cond_frames,
    max_cond_frames_in_attn) + num_maskmem - 1``, and ``F + max_obj_ptrs_in_encoder - 1`` float32
    object pointers (``hidden_dim``) with their object score. (Python's bookkeeping adds about a
    kilobyte per kept frame; one frame's features and the memory position encoding are shared by all
    objects.)"""
    if not isinstance(num_cond_frames, (int, np.integer)) or num_cond_frames < 1:
        raise ValueError(f"num_cond_frames must be a positive int, got {num_cond_frames!r}")
    cond = num_cond_frames
    if config.max_cond_frames_in_attn != -1:
        cond = min(cond, config.max_cond_frames_in_attn)
    g = config.image_size // config.backbone_stride
    frames = cond + config.num_maskmem - 1
    pointers = frames + config.max_obj_ptrs_in_encoder - 1
    return frames * g * g * config.mem_dim * 2 + pointers * (config.hidden_dim + 1) * 4


def fill_holes_in_mask_scores(masks: np.ndarray, max_area: int) -> np.ndarray:
    """``sam2.utils.misc.fill_holes_in_mask_scores`` on ``(..., H, W)`` logits: 8-connected
    background components (logit <= 0) of at most ``max_area`` pixels get logit 0.1."""
    masks = np.asarray(masks, np.float32)
    flat = masks.reshape(-1, *masks.shape[-2:])
    out = np.stack([np.where(_small_components(m <= 0, max_area), np.float32(HOLE_FILL_LOGIT), m) for m in flat])
    return out.reshape(masks.shape)


def _video_parts_of(model: Sam2) -> Sam2VideoParts:
    from sam_jax.build import video_parts_of

    parts = video_parts_of(model)
    if parts is None:
        raise ValueError(
            "SAM2VideoPredictor needs SAM 2's video parts: load the model with sam_jax.load_sam(DIR) of a "
            "directory converted from a full SAM 2 checkpoint (DIR/video.safetensors), or pass video_parts"
        )
    return parts


class SAM2VideoPredictor(PredictorBase):
    """Track objects through a video from clicks, boxes or masks on some of its frames (SAM 2 / 2.1).

    Args:
      model: a sam_jax :class:`~sam_jax.models.sam2.model.Sam2` (``sam_jax.load_sam(DIR)`` of a
        converted SAM 2 checkpoint, which finds the video parts in ``DIR/video.safetensors``).
      video_parts: the memory modules (default: those ``load_sam`` found beside ``model``).
      fill_hole_area, non_overlap_masks, clear_non_cond_mem_around_input,
      add_all_frames_to_correct_as_cond: as the reference's constructor
        (``build_sam2_video_predictor`` sets ``fill_hole_area=8``).
      binarize_mask_from_pts_for_mem_enc: ``build_sam2_video_predictor`` sets it (default True).
      mesh: where the object axis is split (default: all local devices).
    """

    def __init__(
        self,
        model: Sam2,
        video_parts: Sam2VideoParts | None = None,
        *,
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        binarize_mask_from_pts_for_mem_enc: bool = True,
        mesh: Mesh | None = None,
    ) -> None:
        if not isinstance(model, Sam2):
            raise TypeError(f"SAM2VideoPredictor needs a sam_jax Sam2 model, got {type(model).__name__}")
        parts = _video_parts_of(model) if video_parts is None else video_parts
        if not isinstance(parts, Sam2VideoParts):
            raise TypeError(f"video_parts must be a Sam2VideoParts, got {type(parts).__name__}")
        cfg = model.config
        if not cfg.directly_add_no_mem_embed or cfg.num_maskmem < 1:
            raise ValueError(
                f"tracking needs directly_add_no_mem_embed and num_maskmem >= 1 (every released config), got "
                f"{cfg.directly_add_no_mem_embed} and {cfg.num_maskmem}"
            )
        super().__init__(VideoModel(model, parts), mesh)
        self.sam_model, self.video_parts = model, parts
        self.config = cfg
        self.image_size = cfg.image_size
        self.mask_size = cfg.prompt_encoder.mask_input_size
        self.fill_hole_area = int(fill_hole_area)
        self.non_overlap_masks = bool(non_overlap_masks)
        self.clear_non_cond_mem_around_input = bool(clear_non_cond_mem_around_input)
        self.add_all_frames_to_correct_as_cond = bool(add_all_frames_to_correct_as_cond)
        self.binarize = bool(binarize_mask_from_pts_for_mem_enc)

    # --- state ----------------------------------------------------------------------------------

    def init_state(
        self,
        video_path: str | os.PathLike | bytes,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
    ) -> dict:
        """A new inference state for a video: a folder of JPEG frames (``<index>.jpg``) or a video
        file (:func:`sam_jax.video_frames.load_video_frames`). Outputs are kept on the host (as
        with the reference's ``offload_state_to_cpu``) whatever the flags say; frames are read
        lazily with ``async_loading_frames``."""
        from sam_jax.video_frames import load_video_frames

        images, video_height, video_width = load_video_frames(
            video_path,
            self.image_size,
            offload_video_to_cpu,
            img_mean=self.config.pixel_mean,
            img_std=self.config.pixel_std,
            async_loading_frames=async_loading_frames,
        )
        state = self._new_state(images, len(images), video_height, video_width)
        state["offload_video_to_cpu"] = offload_video_to_cpu
        state["offload_state_to_cpu"] = offload_state_to_cpu
        self._features(state, 0)  # warm up on frame 0, as the reference
        return state

    @staticmethod
    def _new_state(images, num_frames: int, video_height: int, video_width: int) -> dict:
        """An inference state without prompts, objects or outputs (``init_state``'s keys)."""
        return {
            "images": images,
            "num_frames": int(num_frames),
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": int(video_height),
            "video_width": int(video_width),
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": OrderedDict(),
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            # (next_frame, reverse) once past outputs were dropped (_forget_past), else None.
            "forgotten": None,
        }

    def reset_state(self, inference_state: dict) -> None:
        """Remove every prompt, output and object."""
        self._reset_tracking_results(inference_state)
        inference_state["forgotten"] = None
        for key in ("obj_id_to_idx", "obj_idx_to_id", "point_inputs_per_obj", "mask_inputs_per_obj"):
            inference_state[key].clear()
        inference_state["obj_ids"].clear()
        for key in ("output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            inference_state[key].clear()

    def _reset_tracking_results(self, state: dict) -> None:
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj"):
            for v in state[key].values():
                v.clear()
        for key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
            for v in state[key].values():
                v[COND].clear()
                v[NON_COND].clear()

    def _obj_id_to_idx(self, state: dict, obj_id) -> int:
        """The object's index, a new one for a new id (also after tracking started)."""
        idx = state["obj_id_to_idx"].get(obj_id)
        if idx is not None:
            return idx
        idx = len(state["obj_id_to_idx"])
        state["obj_id_to_idx"][obj_id] = idx
        state["obj_idx_to_id"][idx] = obj_id
        state["obj_ids"] = list(state["obj_id_to_idx"])
        state["point_inputs_per_obj"][idx] = {}
        state["mask_inputs_per_obj"][idx] = {}
        state["output_dict_per_obj"][idx] = {COND: {}, NON_COND: {}}
        state["temp_output_dict_per_obj"][idx] = {COND: {}, NON_COND: {}}
        state["frames_tracked_per_obj"][idx] = {}
        return idx

    @staticmethod
    def _num_objects(state: dict) -> int:
        return len(state["obj_idx_to_id"])

    # --- prompts --------------------------------------------------------------------------------

    def _check_frame(self, state: dict, frame_idx: object) -> int:
        n = state["num_frames"]
        if not isinstance(frame_idx, (int, np.integer)) or isinstance(frame_idx, bool) or not 0 <= frame_idx < n:
            raise ValueError(f"frame_idx must be an int in [0, {n}), got {frame_idx!r}")
        return int(frame_idx)

    def add_new_points_or_box(
        self,
        inference_state: dict,
        frame_idx: int,
        obj_id,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: np.ndarray | None = None,
    ) -> VideoMasks:
        """Clicks (``points`` ``(N, 2)`` xy, ``labels`` ``(N,)``: 1 foreground, 0 background) and/or a
        ``box`` ``(4,)`` xyxy for object ``obj_id`` on ``frame_idx``, in pixels of the video (or in
        [0, 1] without ``normalize_coords``). A frame the object was not tracked on becomes a
        conditioning frame; on a tracked frame the clicks correct it (with the previous mask fed to
        the decoder). Returns ``(frame_idx, obj_ids, video_res_masks (num_objects, 1, H, W))``."""
        state = inference_state
        frame_idx = self._check_frame(state, frame_idx)
        self._check_not_forgotten(state, frame_idx)
        if (points is not None) != (labels is not None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        if points is None:
            coords, labs = np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
        else:
            batched = np.ndim(points) == 3
            coords, labs = check_points(points, labels, batched=batched, valid_labels=SAM2_LABELS)
            if batched:
                if coords.shape[0] != 1:
                    raise ValueError(f"points must be (N, 2) or (1, N, 2) for one object, got {coords.shape}")
                coords, labs = coords[0], labs[0]
        if box is not None:
            if not clear_old_points:
                raise ValueError(
                    "cannot add box without clearing old points, since box prompt must be provided before any "
                    "point prompt (please use clear_old_points=True instead)"
                )
            corners = check_box(np.reshape(box, -1) if np.size(box) == 4 else box, single=True).reshape(2, 2)
            coords = np.concatenate([corners, coords])
            labs = np.concatenate([np.array([2, 3], np.int32), labs])
        obj_idx = self._obj_id_to_idx(state, obj_id)
        if normalize_coords:
            coords = coords / np.array([state["video_width"], state["video_height"]], np.float32)
        coords = (coords * np.float32(self.image_size)).astype(np.float32)
        per_frame = state["point_inputs_per_obj"][obj_idx]
        old = per_frame.get(frame_idx) if not clear_old_points else None
        if old is not None:
            coords, labs = np.concatenate([old[0], coords]), np.concatenate([old[1], labs])
        per_frame[frame_idx] = (coords, labs)
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)

        is_init, reverse, storage_key = self._frame_role(state, obj_idx, frame_idx)
        prev = self._previous_output(state, obj_idx, frame_idx, storage_key)
        prev_mask = None
        if prev is not None and prev["pred_masks"] is not None:
            prev_mask = np.clip(prev["pred_masks"], -PREV_MASK_CLAMP, PREV_MASK_CLAMP)
        (out,) = self._run_frame(
            state,
            frame_idx,
            [obj_idx],
            mode="init" if is_init else "memory",
            points=[(coords, labs)],
            prev_masks=None if prev_mask is None else [prev_mask],
            reverse=reverse,
            run_mem_encoder=False,
        )
        state["temp_output_dict_per_obj"][obj_idx][storage_key][frame_idx] = out
        return frame_idx, state["obj_ids"], self._consolidated_video_masks(state, frame_idx, storage_key == COND)

    def add_new_points(self, *args, **kwargs) -> VideoMasks:
        """Deprecated name of :meth:`add_new_points_or_box` (as the reference)."""
        return self.add_new_points_or_box(*args, **kwargs)

    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id, mask: np.ndarray) -> VideoMasks:
        """A mask ``(H, W)`` (bool, or numbers: non-zero is object; any size, resized to the model's
        input with antialiasing and thresholded at 0.5) for object ``obj_id`` on ``frame_idx``."""
        state = inference_state
        frame_idx = self._check_frame(state, frame_idx)
        self._check_not_forgotten(state, frame_idx)
        m = np.asarray(mask)
        if m.ndim != 2 or m.size == 0 or not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
            raise ValueError(f"mask must be a non-empty (H, W) boolean or numeric array, got shape {m.shape} {m.dtype}")
        if not self.config.use_mask_input_as_output_without_sam:
            raise NotImplementedError("mask prompts are supported with use_mask_input_as_output_without_sam")
        obj_idx = self._obj_id_to_idx(state, obj_id)
        m = m.astype(bool).astype(np.float32)  # torch.tensor(mask, dtype=torch.bool).float()
        s = self.image_size
        if m.shape != (s, s):
            m = (_resize_axis(_resize_axis(m, 1, s), 0, s) >= 0.5).astype(np.float32)
        state["mask_inputs_per_obj"][obj_idx][frame_idx] = m
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        _, reverse, storage_key = self._frame_role(state, obj_idx, frame_idx)
        (out,) = self._run_frame(
            state, frame_idx, [obj_idx], mode="mask", masks=[m], reverse=reverse, run_mem_encoder=False
        )
        state["temp_output_dict_per_obj"][obj_idx][storage_key][frame_idx] = out
        return frame_idx, state["obj_ids"], self._consolidated_video_masks(state, frame_idx, storage_key == COND)

    def _frame_role(self, state: dict, obj_idx: int, frame_idx: int) -> tuple[bool, bool, str]:
        """``(is_init_cond_frame, reverse, storage_key)`` of a prompt on ``frame_idx``."""
        tracked = state["frames_tracked_per_obj"][obj_idx]
        is_init = frame_idx not in tracked
        reverse = False if is_init else tracked[frame_idx]["reverse"]
        is_cond = is_init or self.add_all_frames_to_correct_as_cond
        return is_init, reverse, COND if is_cond else NON_COND

    @staticmethod
    def _previous_output(state: dict, obj_idx: int, frame_idx: int, storage_key: str) -> dict | None:
        prev = state["temp_output_dict_per_obj"][obj_idx][storage_key].get(frame_idx)
        if prev is None:
            outputs = state["output_dict_per_obj"][obj_idx]
            prev = outputs[COND].get(frame_idx) or outputs[NON_COND].get(frame_idx)
        return prev

    # --- propagation ----------------------------------------------------------------------------

    def propagate_in_video_preflight(self, inference_state: dict) -> None:
        """Move the temporary outputs of prompted frames into the outputs, encoding their memory
        (all objects prompted on a frame in one call)."""
        state = inference_state
        n = self._num_objects(state)
        if n == 0:
            raise RuntimeError("No input points or masks are provided for any object; please add inputs first.")
        pending: dict[int, list[dict]] = collections.defaultdict(list)
        for obj_idx in range(n):
            temp = state["temp_output_dict_per_obj"][obj_idx]
            for key in (NON_COND, COND):
                for frame_idx, out in temp[key].items():
                    if out["maskmem_features"] is None:
                        pending[frame_idx].append(out)
        for frame_idx, outs in pending.items():
            feats, pos = self._encode_memory(state, frame_idx, outs)
            for i, out in enumerate(outs):
                out["maskmem_features"], out["maskmem_pos_enc"] = feats[i : i + 1], pos
        for obj_idx in range(n):
            outputs = state["output_dict_per_obj"][obj_idx]
            temp = state["temp_output_dict_per_obj"][obj_idx]
            for key in (NON_COND, COND):
                for frame_idx, out in temp[key].items():
                    outputs[key][frame_idx] = out
                    if self.clear_non_cond_mem_around_input:
                        self._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)
                temp[key].clear()
            if not outputs[COND]:
                obj_id = state["obj_idx_to_id"][obj_idx]
                raise RuntimeError(
                    f"No input points or masks are provided for object id {obj_id}; please add inputs first."
                )
            for frame_idx in outputs[COND]:
                outputs[NON_COND].pop(frame_idx, None)

    def propagate_in_video(
        self,
        inference_state: dict,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
        *,
        keep_outputs: bool = True,
    ) -> Iterator[VideoMasks]:
        """Track every object from ``start_frame_idx`` (default: the earliest prompted frame) over at
        most ``max_frame_num_to_track`` frames, forwards or in ``reverse``; yields
        ``(frame_idx, obj_ids, video_res_masks (num_objects, 1, H, W))`` per frame. Prompted
        frames give their outputs; the objects that need it are tracked together in one step.

        ``keep_outputs=False`` (not in the reference) holds memory constant in the video's length:
        after each frame, what tracking the next frames in this direction cannot read is dropped
        (:meth:`_forget_past`: masks, prompts and features of frames behind, memory outside the
        bank). The masks yielded are the same; the state then serves only further tracking in that
        direction from where it stopped (new prompts or a propagation behind it raise ``ValueError``;
        :meth:`reset_state` starts over).
        """
        state = inference_state
        self.propagate_in_video_preflight(state)
        obj_ids, num_frames = state["obj_ids"], state["num_frames"]
        outputs = state["output_dict_per_obj"]
        if start_frame_idx is None:
            start_frame_idx = min(t for o in outputs.values() for t in o[COND])
        start_frame_idx = self._check_frame(state, start_frame_idx)
        self._check_not_forgotten(state, start_frame_idx, reverse)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else []
        else:
            end = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
            order = range(start_frame_idx, end + 1)
        step = -1 if reverse else 1
        for frame_idx in order:
            masks = self._propagate_frame(state, frame_idx, reverse)
            if not keep_outputs:
                self._forget_past(state, frame_idx + step, reverse)
            yield frame_idx, obj_ids, masks

    def _propagate_frame(self, state: dict, frame_idx: int, reverse: bool) -> np.ndarray:
        """One frame of ``propagate_in_video`` (after the preflight): the objects without a
        conditioning output there tracked together in one step; every object's video-resolution
        masks ``(num_objects, 1, H, W)``. Shared by :meth:`propagate_in_video` and :meth:`track_stream`."""
        n, outputs = self._num_objects(state), state["output_dict_per_obj"]
        to_track = [i for i in range(n) if frame_idx not in outputs[i][COND]]
        for i in range(n):
            if i not in to_track and self.clear_non_cond_mem_around_input:
                self._clear_obj_non_cond_mem_around_input(state, frame_idx, i)
        if to_track:
            new = self._run_frame(state, frame_idx, to_track, mode="memory", reverse=reverse, run_mem_encoder=True)
            for i, out in zip(to_track, new, strict=True):
                outputs[i][NON_COND][frame_idx] = out
        masks = []
        for i in range(n):
            state["frames_tracked_per_obj"][i][frame_idx] = {"reverse": reverse}
            out = outputs[i][COND].get(frame_idx) or outputs[i][NON_COND][frame_idx]
            masks.append(out["pred_masks"])
        return self._video_res(state, np.stack(masks))

    # --- streaming --------------------------------------------------------------------------------

    def track_stream(
        self,
        frames: Iterable[np.ndarray],
        prompts: Mapping[int, Sequence[tuple]],
        *,
        num_frames: int | None = None,
        image_format: str = "RGB",
        normalize_coords: bool = True,
    ) -> Iterator[VideoMasks]:
        """Track objects through a stream of frames (a camera, a network stream, any iterable),
        yielding ``(frame_idx, obj_ids, video_res_masks (num_objects, 1, H, W))`` for each frame as
        it arrives, with host memory constant in the stream's length.

        Args:
          frames: ``(H, W, 3)`` uint8 frames (``image_format`` "RGB" or "BGR"; gray and RGBA are
            accepted, :func:`sam_jax.video_frames.frames_from_iterator`), all of one size; each is
            read when the previous one has been yielded, nothing is read ahead.
          prompts: ``{frame_idx: [entry, ...]}``, an entry ``(obj_id, points, labels, box)``
            (:meth:`add_new_points_or_box`'s arguments; points ``(N, 2)`` xy and labels ``(N,)`` or
            both None, box ``(4,)`` xyxy or None) or ``(obj_id, mask)`` (:meth:`add_new_mask`), one
            entry per object and frame. Read when frame ``frame_idx`` arrives, so entries may be
            added while iterating (clicks on a live view); an entry for a frame already tracked
            raises ``ValueError``. Objects may appear on any frame.
          num_frames: the stream's length if known: the reference normalises object-pointer
            positions by ``min(num_frames, max_obj_ptrs_in_encoder) - 1``; None (unknown) gives
            what it gives for any video of at least ``max_obj_ptrs_in_encoder`` frames.
          normalize_coords: points and boxes in pixels of the frames (else in [0, 1]).

        Semantics: each frame's prompts are added, then the frame is tracked, exactly the
        reference's interactive sequence ``add_new_points_or_box(frame t)`` then
        ``propagate_in_video(start_frame_idx=t, max_frame_num_to_track=0)`` for every t (a prompt
        on a frame not yet tracked makes it a conditioning frame, no memory of earlier frames);
        with every prompt on the first prompted frame this equals :meth:`propagate_in_video` over
        the same clip. Frames before the first prompt yield no objects. Both paths run one
        :meth:`_propagate_frame` per frame.

        Memory: after each frame only what tracking the next frames can read is kept
        (:meth:`_forget_past`): per object the memory bank (its conditioning frames within
        ``max_cond_frames_in_attn`` (-1: all), the ``num_maskmem - 1`` memory frames
        ``select_memory`` picks next) and the last ``max_obj_ptrs_in_encoder - 1`` object
        pointers; no frame features, masks or prompts of past frames. On the host that is at most
        :func:`stream_bytes_per_object` per object (sam2.1_hiera_*, 1024 px, one prompted frame:
        3.5 MiB, +0.5 MiB per further prompted frame), plus one frame's features and the compiled
        programs.
        """
        from sam_jax.video_frames import frames_from_iterator

        if not isinstance(prompts, Mapping):
            raise TypeError(f"prompts must be a mapping {{frame_idx: [entries]}}, got {type(prompts).__name__}")
        if num_frames is not None and (
            not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames < 1
        ):
            raise ValueError(f"num_frames must be a positive int or None, got {num_frames!r}")
        inputs = frames_from_iterator(
            frames, self.image_size, self.config.pixel_mean, self.config.pixel_std, image_format=image_format
        )
        held = _StreamFrame(STREAM_UNKNOWN_LENGTH if num_frames is None else int(num_frames))
        state: dict | None = None
        applied: set[int] = set()
        for frame_idx, frame in enumerate(inputs):
            if frame_idx >= len(held):
                raise ValueError(f"the stream has more frames than num_frames={len(held)}")
            if state is None:
                state = self._new_state(held, len(held), inputs.video_height, inputs.video_width)
            held.hold(frame_idx, frame)
            late = [t for t in prompts if t < frame_idx and t not in applied]
            if late:
                raise ValueError(f"prompts for frames {sorted(late)} arrived after those frames were tracked")
            if frame_idx in prompts:
                for entry in prompts[frame_idx]:
                    self._add_stream_prompt(state, frame_idx, entry, normalize_coords)
                applied.add(frame_idx)
            if self._num_objects(state) == 0:
                empty = np.zeros((0, 1, state["video_height"], state["video_width"]), np.float32)
                yield frame_idx, [], empty
                continue
            self.propagate_in_video_preflight(state)
            masks = self._propagate_frame(state, frame_idx, reverse=False)
            self._forget_past(state, frame_idx + 1, reverse=False)
            yield frame_idx, list(state["obj_ids"]), masks

    def _add_stream_prompt(self, state: dict, frame_idx: int, entry: tuple, normalize_coords: bool) -> None:
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 4):
            raise ValueError(
                f"frame {frame_idx}: a prompt must be (obj_id, points, labels, box) or (obj_id, mask), got {entry!r}"
            )
        if len(entry) == 2:
            self.add_new_mask(state, frame_idx, entry[0], entry[1])
            return
        obj_id, points, labels, box = entry
        self.add_new_points_or_box(state, frame_idx, obj_id, points, labels, normalize_coords=normalize_coords, box=box)

    def _forget_past(self, state: dict, next_frame: int, reverse: bool) -> None:
        """Drop what tracking from ``next_frame`` on, forwards (or in ``reverse``), can no longer
        read: per object, the outputs behind ``next_frame`` that ``select_memory`` does not pick for
        it (the picks of later frames only move on), the memory features of frames kept only for
        their object pointer, and every frame's masks, prompts and features behind it. Records the
        boundary (``"forgotten"``) for :meth:`_check_not_forgotten`."""
        cfg = self.config
        behind = (lambda t: t > next_frame) if reverse else (lambda t: t < next_frame)
        for obj_idx, out in state["output_dict_per_obj"].items():
            sel = select_memory(cfg, next_frame, out[COND], out[NON_COND], state["num_frames"], reverse)
            memory = {(kind, t) for kind, t, _ in sel.frames}
            pointer = {(kind, t) for kind, t, _ in sel.ptrs}
            for key, kind in ((COND, "cond"), (NON_COND, "non_cond")):
                kept = out[key]
                for t in [t for t in kept if behind(t)]:
                    if (kind, t) not in memory and (kind, t) not in pointer:
                        del kept[t]
                        continue
                    slim = {**kept[t], "pred_masks": None}
                    if (kind, t) not in memory:
                        slim["maskmem_features"] = None
                    kept[t] = slim
            for key in ("point_inputs_per_obj", "mask_inputs_per_obj"):
                per_frame = state[key][obj_idx]
                for t in [t for t in per_frame if behind(t)]:
                    del per_frame[t]
            state["frames_tracked_per_obj"][obj_idx].clear()
        cache = state["cached_features"]
        for t in [t for t in cache if behind(t)]:
            del cache[t]
        state["forgotten"] = (next_frame, reverse)

    @staticmethod
    def _check_not_forgotten(state: dict, frame_idx: int, reverse: bool | None = None) -> None:
        """Raise ``ValueError`` for a frame behind what :meth:`_forget_past` dropped (or, with
        ``reverse`` given, a propagation in the other direction)."""
        if state.get("forgotten") is None:
            return
        boundary, dropped_reverse = state["forgotten"]
        behind = frame_idx > boundary if dropped_reverse else frame_idx < boundary
        if behind or (reverse is not None and reverse != dropped_reverse):
            way = "backwards" if dropped_reverse else "forwards"
            raise ValueError(
                f"this state tracked {way} without keeping its outputs (keep_outputs=False or a stream): it "
                f"serves only frames from {boundary} on in that direction, got frame {frame_idx}"
                + ("" if reverse is None else f" {'backwards' if reverse else 'forwards'}")
                + "; reset_state() to start over"
            )

    # --- removing prompts and objects -------------------------------------------------------------

    def clear_all_prompts_in_frame(self, inference_state: dict, frame_idx: int, obj_id, need_output: bool = True):
        """Remove object ``obj_id``'s prompts on ``frame_idx`` (its output there becomes a
        non-conditioning one)."""
        state = inference_state
        obj_idx = self._obj_id_to_idx(state, obj_id)
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        temp_all = state["temp_output_dict_per_obj"]
        temp_all[obj_idx][COND].pop(frame_idx, None)
        temp_all[obj_idx][NON_COND].pop(frame_idx, None)
        outputs = state["output_dict_per_obj"][obj_idx]
        out = outputs[COND].pop(frame_idx, None)
        if out is not None:
            outputs[NON_COND][frame_idx] = out
            state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in t[COND] for t in temp_all.values())
        return frame_idx, state["obj_ids"], self._consolidated_video_masks(state, frame_idx, is_cond)

    def remove_object(self, inference_state: dict, obj_id, strict: bool = False, need_output: bool = True):
        """Remove an object; returns ``(obj_ids, updated_frames)`` with the consolidated masks of the
        frames it had prompts on (``strict``: raise for an unknown id)."""
        state = inference_state
        old_idx = state["obj_id_to_idx"].get(obj_id)
        updated: list[tuple[int, np.ndarray]] = []
        if old_idx is None:
            if not strict:
                return state["obj_ids"], updated
            raise RuntimeError(
                f"Cannot remove object id {obj_id} as it doesn't exist. All existing object ids: {state['obj_ids']}."
            )
        if len(state["obj_id_to_idx"]) == 1:
            self.reset_state(state)
            return state["obj_ids"], updated
        input_frames = set(state["point_inputs_per_obj"][old_idx]) | set(state["mask_inputs_per_obj"][old_idx])
        for frame_idx in input_frames:
            self.clear_all_prompts_in_frame(state, frame_idx, obj_id, need_output=False)
        old_ids = state["obj_ids"]
        remain = [i for i in range(len(old_ids)) if i != old_idx]
        new_ids = [old_ids[i] for i in remain]
        old_to_new = {old: new for new, old in enumerate(remain)}
        state["obj_id_to_idx"] = OrderedDict((oid, i) for i, oid in enumerate(new_ids))
        state["obj_idx_to_id"] = OrderedDict(enumerate(new_ids))
        state["obj_ids"] = new_ids
        for key in (
            "point_inputs_per_obj",
            "mask_inputs_per_obj",
            "output_dict_per_obj",
            "temp_output_dict_per_obj",
            "frames_tracked_per_obj",
        ):
            container = state[key]
            moved = {old_to_new[k]: v for k, v in container.items() if k in old_to_new}
            container.clear()
            container.update(moved)
        if need_output:
            temp_all = state["temp_output_dict_per_obj"]
            for frame_idx in input_frames:
                is_cond = any(frame_idx in t[COND] for t in temp_all.values())
                updated.append((frame_idx, self._consolidated_video_masks(state, frame_idx, is_cond)))
        return state["obj_ids"], updated

    def _clear_obj_non_cond_mem_around_input(self, state: dict, frame_idx: int, obj_idx: int) -> None:
        """Drop the object's non-conditioning memory within ``stride * num_maskmem`` frames of a
        prompted frame (what the reference's ``clear_non_cond_mem_around_input`` means; its
        per-object method is missing in sam2 1.1.0)."""
        r = self.config.memory_temporal_stride_for_eval * self.config.num_maskmem
        non_cond = state["output_dict_per_obj"][obj_idx][NON_COND]
        for t in range(frame_idx - r, frame_idx + r + 1):
            non_cond.pop(t, None)

    # --- outputs ----------------------------------------------------------------------------------

    def _consolidated_video_masks(self, state: dict, frame_idx: int, is_cond: bool) -> np.ndarray:
        """``_consolidate_temp_output_across_obj(consolidate_at_video_res=True)``: each object's
        latest low-res mask on the frame at video resolution, ``NO_OBJ_SCORE`` where it has none."""
        n = self._num_objects(state)
        key = COND if is_cond else NON_COND
        h, w = state["video_height"], state["video_width"]
        found = []
        for obj_idx in range(n):
            out = state["temp_output_dict_per_obj"][obj_idx][key].get(frame_idx)
            if out is None:
                outputs = state["output_dict_per_obj"][obj_idx]
                out = outputs[COND].get(frame_idx) or outputs[NON_COND].get(frame_idx)
            if out is not None:
                found.append((obj_idx, out["pred_masks"]))
        video = np.full((n, 1, h, w), NO_OBJ_SCORE, np.float32)
        if found:
            resized = self._resize(state, np.stack([m for _, m in found]))
            for j, (obj_idx, _) in enumerate(found):
                video[obj_idx, 0] = resized[j]
        return self._non_overlap(video)

    def _video_res(self, state: dict, pred_masks: np.ndarray) -> np.ndarray:
        """``(n, m, m)`` low-res logits -> ``(n, 1, H, W)`` (``_get_orig_video_res_output``)."""
        return self._non_overlap(self._resize(state, pred_masks)[:, None])

    def _resize(self, state: dict, low_res: np.ndarray) -> np.ndarray:
        hw = (state["video_height"], state["video_width"])
        r = self._cached_resize(hw, lambda size: Resize.direct(self.mask_size, size))
        return np.asarray(postprocess(low_res, r, np.float32(0.0), True))

    def _non_overlap(self, video: np.ndarray) -> np.ndarray:
        if not self.non_overlap_masks:
            return video
        return np.asarray(non_overlapping(jnp.asarray(video.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)

    # --- the device steps -------------------------------------------------------------------------

    def _features(self, state: dict, frame_idx: int) -> dict:
        cache = state["cached_features"]
        if frame_idx in cache:
            cache.move_to_end(frame_idx)
            return cache[frame_idx]
        frame = np.asarray(state["images"][frame_idx], np.float32)[None]
        feats = encode_frames(self.graphdef, self.params, sharding.replicate(frame, self.mesh), self._policy)
        cache[frame_idx] = jax.tree.map(lambda x: x[0], feats)
        while len(cache) > FEATURE_CACHE_SIZE:
            cache.popitem(last=False)
        return cache[frame_idx]

    def _encode_memory(self, state: dict, frame_idx: int, outs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """``_run_memory_encoder`` of prompted outputs (masks from the user's prompts)."""
        n = len(outs)
        size = sharding.padded_batch_size(n, self.mesh)
        pad = lambda x: np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])
        masks = pad(np.stack([o["pred_masks"] for o in outs]))
        scores = pad(np.stack([o["object_score_logits"][0] for o in outs]))
        args = sharding.shard_batch((masks, scores, np.ones(size, bool)), self.mesh)
        feats, pos = encode_memory(
            self.graphdef, self.params, self._features(state, frame_idx), *args, binarize=self.binarize
        )
        feats, pos = jax.device_get((feats, pos))
        state["constants"].setdefault("maskmem_pos_enc", np.asarray(pos)[None])
        return np.asarray(feats[:n]), state["constants"]["maskmem_pos_enc"]

    def _run_frame(
        self,
        state: dict,
        frame_idx: int,
        obj_idxs: list[int],
        *,
        mode: str,
        reverse: bool,
        run_mem_encoder: bool,
        points: list[tuple[np.ndarray, np.ndarray]] | None = None,
        prev_masks: list[np.ndarray] | None = None,
        masks: list[np.ndarray] | None = None,
    ) -> list[dict]:
        """``_run_single_frame_inference`` for the objects ``obj_idxs`` together: one
        :func:`~sam_jax.core.track.track_step`; the compact per-object outputs the state keeps."""
        cfg = self.config
        n = len(obj_idxs)
        size = sharding.padded_batch_size(n, self.mesh)
        if points is None:  # no clicks: the reference's (0, 0) point labelled -1
            coords, labels = [np.zeros((1, 2), np.float32)] * n, [np.full((1,), -1, np.int32)] * n
            num_pts = [0] * n
        else:
            coords, labels = [c for c, _ in points], [lab for _, lab in points]
            num_pts = [len(lab) for lab in labels]
        prompts = make_prompts(
            coords,
            labels,
            None,
            None if prev_masks is None else np.stack(prev_masks),
            num_prompts=n,
            mask_size=self.mask_size,
            num_slots=point_bucket(max(len(c) for c in coords) + 1),
            pad_prompts_to=size,
        )
        is_init = mode == "init"
        multimask = [
            cfg.multimask_output_in_sam
            and (is_init or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= k <= cfg.multimask_max_pt_num
            for k in num_pts
        ]
        pad = lambda x: np.concatenate([x, np.repeat(x[:1], size - n, axis=0)]) if size > n else x
        inputs = TrackInputs(
            prompts=drop_absent(prompts),
            multimask=pad(np.array(multimask, bool)),
            is_mask_from_pts=pad(np.full(n, points is not None, bool)),
            masks=None if masks is None else pad(np.stack(masks).astype(np.float32)),
        )
        bank = shared = None
        if mode == "memory":
            bank, shared = self._bank(state, frame_idx, obj_idxs, reverse)
            bank = {k: pad(v) for k, v in bank.items()}
        per_object = sharding.shard_batch((inputs, bank), self.mesh)
        if shared is not None:
            per_object[1].update(sharding.replicate(shared, self.mesh))
        result = track_step(
            self.graphdef,
            self.params,
            per_object[1],
            self._features(state, frame_idx),
            per_object[0],
            mode=mode,
            run_mem_encoder=run_mem_encoder,
            binarize=self.binarize,
            policy=self._policy,
        )
        result = jax.device_get(result)
        pred_masks = np.asarray(result.pred_masks[:n], np.float32)
        if self.fill_hole_area > 0:
            pred_masks = fill_holes_in_mask_scores(pred_masks, self.fill_hole_area)
        pos = None
        if result.maskmem_features is not None:
            pos = state["constants"].setdefault("maskmem_pos_enc", np.asarray(result.maskmem_pos_enc)[None])
        return [
            {
                "maskmem_features": None if pos is None else np.asarray(result.maskmem_features[j : j + 1]),
                "maskmem_pos_enc": pos,
                "pred_masks": pred_masks[j],
                "obj_ptr": np.asarray(result.obj_ptr[j : j + 1], np.float32),
                "object_score_logits": np.asarray(result.object_score_logits[j : j + 1], np.float32),
            }
            for j in range(n)
        ]

    def _bank(
        self, state: dict, frame_idx: int, obj_idxs: list[int], reverse: bool
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each object's memory for ``frame_idx`` (``_prepare_memory_conditioned_features``'
        choice, per object), stacked into a bank whose slot counts are compile buckets."""
        cfg = self.config
        selections, outputs = [], []
        for i in obj_idxs:
            out = state["output_dict_per_obj"][i]
            if not out[COND]:
                obj_id = state["obj_idx_to_id"][i]
                raise RuntimeError(f"object id {obj_id} has no conditioning frame to track from")
            selections.append(select_memory(cfg, frame_idx, out[COND], out[NON_COND], state["num_frames"], reverse))
            outputs.append({"cond": out[COND], "non_cond": out[NON_COND]})
        cond_slots = pow2_at_least(max(sum(k == "cond" and p == 0 for k, _, p in s.frames) for s in selections))
        pos = state["constants"]["maskmem_pos_enc"]
        bank = stack_banks(cfg, selections, outputs, cond_slots, pos[0])
        shared = {k: bank.pop(k) for k in list(bank) if k not in PER_OBJECT_BANK}
        return bank, shared


__all__ = ["SAM2VideoPredictor", "fill_holes_in_mask_scores", "stream_bytes_per_object"]
