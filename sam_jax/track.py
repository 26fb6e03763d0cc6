"""Tracking objects through a video to files: the library behind ``sam-jax track``.

Prompts (points and boxes on given frames, grouped by object id) go to a SAM 2 video predictor
(``SAM2VideoPredictor``'s API, the reference's: ``init_state``, ``add_new_points_or_box``,
``propagate_in_video``), which tracks from the earliest prompted frame to the end (or, ``reverse``,
from the latest prompted frame back to frame 0). ``OUTPUT`` receives:

- ``masks/<frame>.png`` (``fmt="png"``): one indexed (palette) PNG per tracked frame, pixel value =
  object id, 0 background (the DAVIS / SAM 2 ``vos_inference`` layout; read with
  ``np.asarray(PIL.Image.open(path))``). Where objects overlap, the higher id wins (as ``vos_inference``
  pastes objects in order); ids are 1..255.
- ``masks/<frame>.json`` (``fmt="coco"``) instead: ``{"frame", "height", "width", "objects": [{"obj_id",
  "segmentation" (COCO RLE, compressed counts), "area", "bbox" (XYWH)}]}``, each object's own mask,
  overlaps kept.
- ``overlay.mp4`` (unless ``overlay=False``): every frame of the video with the masks blended in and
  the prompts drawn on their frames, H.264 at the video's frame rate (24 fps for a JPEG folder).
- ``track.json``: what was asked (video, prompts, options), ``"complete"`` once everything is written.

Host memory stays constant in the video's length: frames are decoded on demand (``init_state(...,
async_loading_frames=True)``: a few cached) and each frame's outputs are dropped once no later frame's
memory reads them (``propagate_in_video(..., keep_outputs=False)``, the same masks).

``<frame>`` is the frame index, zero-padded to 5 digits. Masks are the predictor's logits ``> 0`` at
the video's resolution, as the reference's notebooks threshold them. Every file is written atomically
(a temporary sibling, then a rename), so an interrupted run leaves only whole files.

What resuming means for a tracker: a frame's mask depends on the memory of every frame tracked before
it, and that memory is not saved, so tracking cannot restart in the middle. Running the same command
again re-tracks from the prompts and *keeps* the mask files already written (they are not rewritten;
tracking on the same machine gives the same masks); a run whose ``track.json`` says complete, with its
files present, returns without loading the model (writing only a missing overlay). An ``OUTPUT`` that
holds another run (other prompts, video or options) is refused unless ``force``, which deletes its masks.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from sam_jax.io import write_atomic, write_json
from sam_jax.segment import check_prompts_inside
from sam_jax.video_frames import VideoInfo, iter_rgb_frames, probe_video, write_video
from sam_jax.visualize import overlay, palette

FORMATS = ("png", "coco")
MANIFEST = "track.json"
MASKS = "masks"
OVERLAY = "overlay.mp4"
MAX_PNG_ID = 255
# Index colours of the mask PNGs: 0 black, object k colour k - 1 of sam_jax.visualize.palette (as in the
# overlay when the ids are 1..n).
PNG_PALETTE = np.concatenate([np.zeros((1, 3), np.uint8), palette(MAX_PNG_ID)])


@dataclasses.dataclass(frozen=True)
class ObjectPrompt:
    """What one object is given on one frame: points ``(N, 2)`` xy pixels with labels ``(N,)`` (1
    foreground, 0 background) and/or a box ``(4,)`` xyxy pixels; one ``add_new_points_or_box`` call."""

    frame: int
    obj_id: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "obj_id": self.obj_id,
            "points": None if self.points is None else self.points.tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "box": None if self.box is None else self.box.tolist(),
        }


def group_prompts(items: Sequence[tuple[str, int, int, Sequence[float]]]) -> list[ObjectPrompt]:
    """Command-line prompts ``(kind, frame, obj_id, values)`` -> one :class:`ObjectPrompt` per
    ``(frame, obj_id)``, in the order each pair first appears.

    ``kind`` "point" (values ``X, Y`` or ``X, Y, LABEL``) or "box" (``X1, Y1, X2, Y2``). Raises
    ``ValueError`` for no prompt, a second box for one object on one frame, a label other than 0/1, a
    negative frame or an object id below 1.
    """
    if not items:
        raise ValueError("give at least one --point or --box")
    groups: dict[tuple[int, int], dict[str, list]] = {}
    for kind, frame, obj_id, values in items:
        if frame < 0:
            raise ValueError(f"--frame must be >= 0, got {frame}")
        if obj_id < 1:
            raise ValueError(f"--obj-id must be >= 1, got {obj_id}")
        group = groups.setdefault((frame, obj_id), {"points": [], "labels": [], "boxes": []})
        if kind == "point":
            label = 1 if len(values) == 2 else values[2]
            if label not in (0, 1):
                raise ValueError(f"point label must be 1 (foreground) or 0 (background), got {label:g}")
            group["points"].append(list(values[:2]))
            group["labels"].append(int(label))
        elif kind == "box":
            if group["boxes"]:
                raise ValueError(
                    f"object {obj_id} has two boxes on frame {frame}: one box per object and frame "
                    "(give each box its own --obj-id)"
                )
            group["boxes"].append(list(values))
        else:
            raise ValueError(f"prompt kind must be 'point' or 'box', got {kind!r}")
    return [
        ObjectPrompt(
            frame,
            obj_id,
            np.array(g["points"], np.float32) if g["points"] else None,
            np.array(g["labels"], np.int32) if g["points"] else None,
            np.array(g["boxes"][0], np.float32) if g["boxes"] else None,
        )
        for (frame, obj_id), g in groups.items()
    ]


class VideoPredictor(Protocol):
    """The part of ``SAM2VideoPredictor`` (the reference's API) that tracking to files uses."""

    def init_state(self, video_path: str, **kwargs: Any) -> Any: ...

    def add_new_points_or_box(
        self, inference_state: Any, frame_idx: int, obj_id: int, points: Any = None, labels: Any = None, **kw: Any
    ) -> Any: ...

    def propagate_in_video(
        self,
        inference_state: Any,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
        *,
        keep_outputs: bool = True,
    ) -> Iterator[tuple[int, Sequence[int], Any]]: ...


NO_SAM2_MODEL = (
    "tracking needs a SAM 2 model with its video weights: pass --checkpoint DIR, a SAM 2 checkpoint "
    "(sam2/sam2.1 *.pt, or transformers facebook/sam2*) converted with `sam-jax convert` (there is no "
    "bundled SAM 2 demo model)"
)


def check_video_checkpoint(checkpoint: str | os.PathLike | None) -> None:
    """Raise ``ValueError`` unless ``checkpoint`` is a SAM 2 checkpoint directory (reads only its
    ``config.json``; the video weights are checked when the predictor loads them)."""
    from sam_jax.checkpoint import load_config
    from sam_jax.models.sam2.config import Sam2Config

    if checkpoint is None:
        raise ValueError(NO_SAM2_MODEL)
    config = load_config(checkpoint)
    if not isinstance(config, Sam2Config):
        raise ValueError(f"{checkpoint} holds SAM 1 model {config.name!r}: {NO_SAM2_MODEL}")


def load_video_predictor(checkpoint: str | os.PathLike) -> VideoPredictor:
    """``SAM2VideoPredictor`` on the SAM 2 model of a converted checkpoint directory."""
    from sam_jax.build import load_sam

    check_video_checkpoint(checkpoint)
    try:
        from sam_jax.predictors.sam2_video import SAM2VideoPredictor
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"this sam_jax has no video predictor (sam_jax.predictors.sam2_video): {e}") from e
    return SAM2VideoPredictor(load_sam(checkpoint))


def tracked_frames(num_frames: int, start: int, reverse: bool, max_frames: int | None) -> range:
    """The frames ``propagate_in_video(start_frame_idx=start, ...)`` visits, in order (the reference's rule:
    ``max_frames`` frames beyond ``start``, nothing when tracking backwards from frame 0)."""
    limit = num_frames if max_frames is None else max_frames
    if reverse:
        return range(start, max(start - limit, 0) - 1, -1) if start > 0 else range(0)
    return range(start, min(start + limit, num_frames - 1) + 1)


def mask_file(output_dir: Path, frame: int, fmt: str) -> Path:
    """Where frame ``frame``'s masks go."""
    return output_dir / MASKS / f"{frame:05d}.{'png' if fmt == 'png' else 'json'}"


def encode_label_png(masks: np.ndarray, obj_ids: Sequence[int]) -> bytes:
    """``(O, H, W)`` bool masks of objects ``obj_ids`` -> an indexed PNG of object ids (0 background),
    objects pasted in increasing id order (the higher id wins where they overlap)."""
    labels = np.zeros(masks.shape[1:], np.uint8)
    for k in np.argsort(obj_ids, kind="stable"):
        labels[masks[k]] = obj_ids[k]
    image = Image.fromarray(labels)
    image.putpalette(PNG_PALETTE.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_coco_frame(frame: int, masks: np.ndarray, obj_ids: Sequence[int]) -> dict[str, Any]:
    """``(O, H, W)`` bool masks -> the ``masks/<frame>.json`` record (COCO RLE per object)."""
    from pycocotools import mask as mask_utils

    from sam_jax.amg.rle import coco_encode_rle, mask_to_rle

    objects = []
    for obj_id, mask in zip(obj_ids, masks, strict=True):
        rle = coco_encode_rle(mask_to_rle(mask))
        bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
        objects.append({"obj_id": int(obj_id), "segmentation": rle, "area": int(mask.sum()), "bbox": bbox})
    return {"frame": frame, "height": masks.shape[1], "width": masks.shape[2], "objects": objects}


def read_mask_file(path: Path, obj_ids: Sequence[int]) -> np.ndarray:
    """``(len(obj_ids), H, W)`` bool masks of ``obj_ids`` from a ``masks/`` file of either format."""
    from sam_jax.amg.rle import coco_rle_to_mask

    if path.suffix == ".png":
        with Image.open(path) as im:
            labels = np.asarray(im)
        return labels[None] == np.asarray(obj_ids, labels.dtype)[:, None, None]
    record = json.loads(path.read_text())
    by_id = {o["obj_id"]: coco_rle_to_mask(o["segmentation"]) for o in record["objects"]}
    empty = np.zeros((record["height"], record["width"]), bool)
    return np.stack([by_id.get(k, empty) for k in obj_ids])


def _settings(video: Path, info: VideoInfo, prompts: Sequence[ObjectPrompt], **options: Any) -> dict[str, Any]:
    return {
        "video": str(video.resolve()),
        "num_frames": info.num_frames,
        "video_size": [info.height, info.width],
        "prompts": [p.to_json() for p in prompts],
        **options,
    }


def _check_output(output_dir: Path, settings: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The manifest of the same run already in ``output_dir``, or None; refuses another run's output
    (or clears it with ``force``)."""
    manifest_path = output_dir / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    masks = output_dir / MASKS
    if previous is not None and {k: previous.get(k) for k in settings} == settings:
        return previous
    if previous is None and not (masks.is_dir() and any(masks.iterdir())):
        return None
    if not force:
        what = (
            "masks of another tracking run (its track.json differs in: "
            + ", ".join(k for k in settings if previous.get(k) != settings[k])
            + ")"
            if previous is not None
            else f"a {MASKS}/ folder but no {MANIFEST}"
        )
        raise ValueError(f"{output_dir} holds {what}; give another --output, or --force to replace them")
    shutil.rmtree(masks, ignore_errors=True)
    for name in (OVERLAY, MANIFEST):
        (output_dir / name).unlink(missing_ok=True)
    return None


def write_overlay(
    video: str | os.PathLike,
    output_dir: Path,
    obj_ids: Sequence[int],
    prompts: Sequence[ObjectPrompt],
    fmt: str,
    fps: float,
) -> Path:
    """``output_dir/overlay.mp4``: every frame with the masks written for it and its prompts drawn on
    it. The ``j``-th object in id order gets colour ``j`` of :func:`sam_jax.visualize.palette`, which is
    its PNG colour when the ids are 1..n."""
    ids = sorted(obj_ids)

    def frames() -> Iterator[np.ndarray]:
        for i, rgb in enumerate(iter_rgb_frames(video)):
            path = mask_file(output_dir, i, fmt)
            masks = read_mask_file(path, ids) if path.exists() else np.zeros((len(ids), *rgb.shape[:2]), bool)
            here = [p for p in prompts if p.frame == i]
            points = [p.points for p in here if p.points is not None]
            labels = [p.labels for p in here if p.labels is not None]
            boxes = [p.box for p in here if p.box is not None]
            yield overlay(
                rgb,
                masks,
                points=np.concatenate(points) if points else None,
                labels=np.concatenate(labels) if labels else None,
                boxes=np.stack(boxes) if boxes else None,
            )

    write_video(output_dir / OVERLAY, frames(), fps)
    return output_dir / OVERLAY


def track_to_files(
    make_predictor: Callable[[], VideoPredictor],
    video: str | os.PathLike,
    output_dir: str | os.PathLike,
    prompts: Sequence[ObjectPrompt],
    *,
    fmt: str = "png",
    reverse: bool = False,
    max_frames: int | None = None,
    write_overlay_video: bool = True,
    force: bool = False,
    progress: bool = True,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Track the objects ``prompts`` give through ``video`` (a JPEG folder or a video file) and write
    ``output_dir`` as the module docstring lays out.

    ``make_predictor`` is called only when tracking is needed (not for a finished run); ``checkpoint``
    is recorded in the manifest, so output from another model is not mixed in. Raises ``ValueError``
    for an unreadable video, a prompt on a frame the video lacks or outside the frame, a format other
    than :data:`FORMATS`, an object id over 255 with PNGs, or an output holding another run.
    Returns the manifest written to ``track.json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not prompts:
        raise ValueError("give at least one --point or --box")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    video, output_dir = Path(video), Path(output_dir)
    info = probe_video(video)
    obj_ids = sorted({p.obj_id for p in prompts})
    if fmt == "png" and obj_ids[-1] > MAX_PNG_ID:
        raise ValueError(f"object ids must be 1..{MAX_PNG_ID} with --format png, got {obj_ids[-1]}; use --format coco")
    for p in prompts:
        if not 0 <= p.frame < info.num_frames:
            raise ValueError(
                f"--frame {p.frame} is not in the video, which has {info.num_frames} frames (0..{info.num_frames - 1})"
            )
        try:
            check_prompts_inside((info.height, info.width), p.points, p.box)
        except ValueError as e:
            raise ValueError(f"frame {p.frame}, object {p.obj_id}: {e}") from None
    start = max(p.frame for p in prompts) if reverse else min(p.frame for p in prompts)
    frames = tracked_frames(info.num_frames, start, reverse, max_frames)
    if not frames:
        raise ValueError("tracking backwards from frame 0 covers no frames: drop --reverse or prompt a later frame")
    settings = _settings(
        video, info, prompts, format=fmt, reverse=reverse, max_frames=max_frames, checkpoint=checkpoint
    )
    previous = _check_output(output_dir, settings, force)
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = {**settings, "obj_ids": obj_ids, "frames": [frames[0], frames[-1]], "complete": False}
    done = (
        previous is not None
        and previous.get("complete")
        and all(mask_file(output_dir, i, fmt).exists() for i in frames)
    )
    written, kept = 0, len(frames)
    if not done:
        write_json(output_dir / MANIFEST, manifest)
        written, kept = _track(
            make_predictor(), video, output_dir, prompts, fmt, start, reverse, max_frames, frames, progress
        )
    if write_overlay_video and not (output_dir / OVERLAY).exists():
        write_overlay(video, output_dir, obj_ids, prompts, fmt, info.fps)
    manifest = {**manifest, "complete": True, "tracked": not done, "written": written, "kept": kept}
    write_json(output_dir / MANIFEST, manifest)
    return manifest


def _track(
    predictor: VideoPredictor,
    video: Path,
    output_dir: Path,
    prompts: Sequence[ObjectPrompt],
    fmt: str,
    start: int,
    reverse: bool,
    max_frames: int | None,
    frames: range,
    progress: bool,
) -> tuple[int, int]:
    """Run the predictor and write each frame's masks (those not already on disk); returns (written, kept)."""
    from tqdm import tqdm

    # Memory constant in the video's length: frames read on demand (a few cached), and each frame's
    # outputs dropped once no later frame's memory reads them.
    state = predictor.init_state(video_path=str(video), async_loading_frames=True)
    for p in prompts:
        predictor.add_new_points_or_box(
            state, frame_idx=p.frame, obj_id=p.obj_id, points=p.points, labels=p.labels, box=p.box
        )
    written = kept = 0
    stream = predictor.propagate_in_video(
        state, start_frame_idx=start, max_frame_num_to_track=max_frames, reverse=reverse, keep_outputs=False
    )
    with tqdm(total=len(frames), disable=not progress, desc="track", unit="frame") as bar:
        for frame_idx, obj_ids, logits in stream:
            path = mask_file(output_dir, int(frame_idx), fmt)
            if path.exists():
                kept += 1
            else:
                masks = np.asarray(logits)
                if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != len(obj_ids):
                    raise RuntimeError(
                        f"propagate_in_video yielded masks of shape {masks.shape} for {len(obj_ids)} objects, "
                        "expected (objects, 1, H, W) logits"
                    )
                masks = masks[:, 0] > 0.0
                ids = [int(k) for k in obj_ids]
                if fmt == "png":
                    write_atomic(path, encode_label_png(masks, ids))
                else:
                    write_json(path, encode_coco_frame(int(frame_idx), masks, ids))
                written += 1
            bar.update()
    return written, kept


__all__ = [
    "FORMATS",
    "ObjectPrompt",
    "VideoPredictor",
    "check_video_checkpoint",
    "encode_coco_frame",
    "encode_label_png",
    "group_prompts",
    "load_video_predictor",
    "mask_file",
    "read_mask_file",
    "track_to_files",
    "tracked_frames",
    "write_overlay",
]
