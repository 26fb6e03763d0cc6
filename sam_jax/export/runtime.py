"""Run an export directory (``sam-jax export``) with JAX and NumPy only: no sam_jax model code,
no Flax. The host-side steps (image resize, prompt frames, the reference's padding point) are the
predictors' own NumPy functions (:mod:`sam_jax.core.transforms`, :mod:`sam_jax.core.prompts`; for
SAM 2 :mod:`sam_jax.models.sam2.transforms`, imported when a SAM 2 export is loaded), so results are
the predictors' (``tests/test_export.py``).

    sam = ExportedSam.load("export_dir")
    sam.set_image(image)                       # (H, W, 3) uint8 RGB
    masks, iou, low_res = sam.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from sam_jax.core.prompts import (
    Prompts,
    check_box,
    check_mask_input,
    check_point_sets,
    check_points,
    make_prompts,
    pow2_at_least,
)
from sam_jax.core.transforms import apply_boxes, apply_coords, resize_image
from sam_jax.export import manifest as mf
from sam_jax.io import as_rgb_uint8

SAM2_LABELS = (-1, 0, 1, 2, 3)
SAM2_BOX_LABELS = (2, 3)
# SAM2ImagePredictor clamps the low-res logits it returns (sam_jax.predictors.sam2.LOW_RES_CLAMP).
SAM2_LOW_RES_CLAMP = 32.0


class ExportedSam:
    """``SamPredictor``'s ``set_image`` / ``predict`` over exported programs (either family).

    Attributes: ``manifest`` (the parsed ``manifest.json``), ``family``, ``img_size``, ``mask_size``.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory, self.manifest = directory, manifest
        self.family = manifest["family"]
        self.img_size, self.mask_size = manifest["img_size"], manifest["mask_size"]
        self.mask_threshold = float(manifest["mask_threshold"])
        with np.load(directory / manifest["params"]["file"]) as f:
            self._weights = [jax.device_put(f[mf.param_key(i)]) for i in range(manifest["params"]["count"])]
            self._image_pe = jax.device_put(f[manifest["params"]["image_pe"]])
        backend = jax.default_backend()
        name = mf.ENCODER_CPU if backend == "cpu" else mf.ENCODER_ACCEL
        self._encoder = self._program(name)
        self._loaded: dict[str, Any] = {}
        if self.family == "sam2":
            from sam_jax.models.sam2 import transforms as sam2_transforms  # NumPy only

            self._sam2 = sam2_transforms
        self.reset_image()

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ExportedSam:
        """Open an export directory written by ``sam-jax export``."""
        directory = Path(directory)
        path = directory / mf.MANIFEST
        if not path.is_file():
            raise ValueError(f"{directory} is not a sam_jax export (no {mf.MANIFEST})")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != mf.FORMAT or manifest.get("format_version") != mf.FORMAT_VERSION:
            raise ValueError(
                f"{path} is not a {mf.FORMAT} v{mf.FORMAT_VERSION} manifest, got "
                f"{manifest.get('format')!r} v{manifest.get('format_version')!r}"
            )
        return cls(directory, manifest)

    def _program(self, name: str) -> export.Exported:
        return export.deserialize(bytearray((self.directory / mf.artifact_file(name)).read_bytes()))

    # --- images ---------------------------------------------------------------------------------

    def reset_image(self) -> None:
        """Forget the current image."""
        self.features: tuple[jax.Array, ...] | None = None
        self.original_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode ``image``: ``(H, W, 3)`` uint8 (``image_format`` "RGB" or "BGR"; gray and RGBA accepted)."""
        rgb = as_rgb_uint8(image, image_format)
        s = self.img_size
        if self.family == "sam":
            resized = resize_image(rgb, s)
            canvas = np.zeros((1, s, s, 3), np.uint8)
            canvas[0, : resized.shape[0], : resized.shape[1]] = resized
            sizes = np.array([resized.shape[:2]], np.int32)
        else:
            canvas = self._sam2.squash_image(rgb, s)[None]
            sizes = np.array([[s, s]], np.int32)
        feats = self._encoder.call(self._weights, canvas, sizes)
        self.features = tuple(f[0] for f in feats)
        self.original_size = (int(rgb.shape[0]), int(rgb.shape[1]))

    # --- prompts --------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts on the current image, as ``SamPredictor.predict`` (SAM 1: one
        prompt) or ``SAM2ImagePredictor.predict`` (SAM 2: float 0/1 masks, low-res logits clamped;
        ``(B, N, 2)`` points, ``(B, 4)`` boxes and ``(B, 1, m, m)`` masks give ``B`` objects).

        Args: ``point_coords`` ``(N, 2)`` xy pixels, ``point_labels`` ``(N,)``, ``box`` ``(4,)``
        xyxy, ``mask_input`` ``(1, m, m)`` low-res logits, in the original image's frame.

        Returns: masks ``(C, H, W)``, iou_predictions ``(C,)``, low_res_logits ``(C, m, m)``
        (SAM 2 with ``B > 1`` objects: each with a leading ``B``).
        """
        self._require_image()
        if self.family == "sam2":
            return self._predict_sam2(point_coords, point_labels, box, mask_input, multimask_output, return_logits)
        coords = labels = boxes = masks = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels)
            coords, labels = [coords], [labels]
        if box is not None:
            boxes = check_box(box, single=True)[None]
        if mask_input is not None:
            masks = check_mask_input(mask_input, self.mask_size, single=True)
        if coords is None and boxes is None and masks is None:
            raise ValueError("give at least one of point_coords, box or mask_input")
        out = self._predict_sam(coords, labels, boxes, masks, 1, multimask_output, return_logits)
        return tuple(x[0] for x in out)

    def predict_batch(
        self,
        point_coords: np.ndarray | Sequence[np.ndarray] | None = None,
        point_labels: np.ndarray | Sequence[np.ndarray] | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``B`` prompts on the current image in one call, as ``SamPredictor.predict_batch`` (SAM 1;
        SAM 2's :meth:`predict` takes ``B`` objects itself).

        Args: ``point_coords`` ``(B, N, 2)`` or ``B`` arrays ``(N_i, 2)``, ``point_labels`` to
        match, ``boxes`` ``(B, 4)``, ``mask_input`` ``(B, 1, m, m)``.

        Returns: masks ``(B, C, H, W)``, iou_predictions ``(B, C)``, low_res_logits ``(B, C, m, m)``.
        """
        self._require_image()
        if self.family != "sam":
            raise ValueError("predict_batch is SAM 1's; a SAM 2 export takes (B, N, 2) points in predict")
        coords = labels = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_point_sets(point_coords, point_labels)
        if boxes is not None:
            boxes = check_box(boxes, single=False)
        if mask_input is not None:
            mask_input = check_mask_input(mask_input, self.mask_size, single=False)
        counts = [None if x is None else len(x) for x in (coords, boxes, mask_input)]
        if len({c for c in counts if c is not None}) > 1:
            raise ValueError(f"point_coords, boxes and mask_input must have the same batch size B, got {counts}")
        n = next((c for c in counts if c is not None), None)
        if n is None:
            raise ValueError("give at least one of point_coords, boxes or mask_input")
        if boxes is None and coords is not None and any(len(c) == 0 for c in coords):
            raise ValueError("a prompt without a box needs at least one point (or a mask_input for all)")
        return self._predict_sam(coords, labels, boxes, mask_input, n, multimask_output, return_logits)

    def _require_image(self) -> None:
        if self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def _predict_sam(self, coords, labels, boxes, masks, n, multimask_output, return_logits):
        hw, s = self.original_size, self.img_size
        if coords is not None:
            coords = [apply_coords(c, hw, s) for c in coords]
        if boxes is not None:
            boxes = apply_boxes(boxes, hw, s)
        prompts = make_prompts(
            coords, labels, boxes, masks, num_prompts=n, mask_size=self.mask_size, pad_prompts_to=pow2_at_least(n)
        )
        masks_out, logits, iou, low_res = self._decode(prompts, n, bool(multimask_output))
        return (logits if return_logits else masks_out), iou, low_res

    def _predict_sam2(self, point_coords, point_labels, box, mask_input, multimask_output, return_logits):
        # SAM2ImagePredictor._prep_prompts: box corners (labels 2, 3) ahead of the clicks.
        hw, s, m = self.original_size, self.img_size, self.mask_size
        clicks = labels = boxes = masks = None
        if point_coords is not None or point_labels is not None:
            batched = np.ndim(point_coords) == 3
            clicks, labels = check_points(point_coords, point_labels, batched=batched, valid_labels=SAM2_LABELS)
            clicks, labels = (clicks, labels) if batched else (clicks[None], labels[None])
            clicks = self._sam2.transform_coords(clicks, hw, s)
        if box is not None:
            boxes = self._sam2.transform_boxes(check_box(box, single=False), hw, s)
        if mask_input is not None:
            if np.ndim(mask_input) not in (3, 4):
                raise ValueError(f"mask_input must be (1, {m}, {m}) or (B, 1, {m}, {m}), got {np.shape(mask_input)}")
            masks = check_mask_input(mask_input, m, single=np.ndim(mask_input) == 3)
        counts = {k: len(x) for k, x in (("points", clicks), ("boxes", boxes)) if x is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(f"point_coords and box must describe the same number of objects, got {counts}")
        n = next(iter(counts.values()), None)
        if masks is not None:
            if n is not None and len(masks) not in (1, n):
                raise ValueError(f"mask_input must hold 1 or {n} masks (one per object), got {len(masks)}")
            n = len(masks) if n is None else n
            masks = np.broadcast_to(masks, (n, m, m))
        n = 1 if n is None else n
        coords = token_labels = None
        if clicks is not None or boxes is not None:
            coords = list(np.concatenate([x for x in (boxes, clicks) if x is not None], axis=1))
            parts = [np.broadcast_to(np.array(SAM2_BOX_LABELS, np.int32), (n, 2))] if boxes is not None else []
            token_labels = list(np.concatenate([*parts, *([labels] if labels is not None else [])], axis=1))
        prompts = make_prompts(
            coords, token_labels, None, masks, num_prompts=n, mask_size=m, pad_prompts_to=pow2_at_least(n)
        )
        masks_out, logits, iou, low_res = self._decode(prompts, n, bool(multimask_output))
        out = (logits if return_logits else masks_out.astype(np.float32)), iou, low_res
        return tuple(x[0] for x in out) if n == 1 else out

    def _decode(self, prompts: Prompts, n: int, multimask: bool) -> tuple[np.ndarray, ...]:
        """Run ``prompts`` (padded to the predictors' bucket ``P``) through the decoder programs,
        then the first ``n`` through ``postprocess``: the program for ``P`` prompts, or ``P / k``
        calls of the one for ``k`` where the exported predictors step through ``P`` in chunks of
        ``k`` (a CPU) or ``P`` is past the largest bucket exported (then not bitwise the
        predictors'). Returns masks, logits ``(n, C, H, W)``, IoU ``(n, C)`` and low-res logits
        ``(n, C, m, m)`` (SAM 2: clamped, as ``SAM2ImagePredictor``)."""
        bucket, slots = prompts.coords.shape[:2]
        box, mask = bool(prompts.box_valid.any()), bool(prompts.mask_valid.any())
        inputs = dict(zip(mf.PROMPT_FIELDS, prompts, strict=True))
        inputs.update(zip(self._feature_names(), self.features, strict=True))
        step, entry = self._decoder(multimask, bucket, slots, box, mask)
        program, names = self._load(entry["name"]), [a["name"] for a in entry["inputs"]]
        parts = []
        for i in range(0, bucket, step):
            args = [inputs[k][i : i + step] if k in mf.PROMPT_FIELDS else inputs[k] for k in names]
            parts.append(program(self._weights, self._image_pe, *args))
        low_res, iou = (jnp.concatenate([p[j] for p in parts])[:n] for j in range(2))
        c, m = low_res.shape[1], self.mask_size
        size_like = np.zeros((*self.original_size, 0), np.uint8)
        masks, logits = self._load(mf.POSTPROCESS)(low_res.reshape(n * c, m, m), size_like)
        masks, logits, iou, low_res = jax.device_get((masks, logits, iou, low_res))
        hw = self.original_size
        if self.family == "sam2":
            low_res = np.clip(low_res, -SAM2_LOW_RES_CLAMP, SAM2_LOW_RES_CLAMP)
        return masks.reshape(n, c, *hw), logits.reshape(n, c, *hw), iou, low_res

    def _load(self, name: str):
        """A program by name, deserialised once and wrapped in ``jax.jit`` (compiled once per shape)."""
        if name not in self._loaded:
            self._loaded[name] = jax.jit(self._program(name).call)
        return self._loaded[name]

    def _feature_names(self) -> list[str]:
        return [o["name"] for o in self.manifest["encoders"][0]["outputs"]]

    def _decoder(self, multimask: bool, bucket: int, slots: int, box: bool, mask: bool) -> tuple[int, dict]:
        """``(k, entry)``: the decoder program to run ``bucket`` prompts with, ``k`` at a time."""
        platform = export.default_export_platform()
        kind = (multimask, slots, box, mask)
        have = {
            d["num_prompts"]: d
            for d in self.manifest["decoders"]
            if platform in d["platforms"] and (d["multimask_output"], d["num_slots"], d["box"], d["mask_input"]) == kind
        }
        if not have:
            slots_have = sorted({d["num_slots"] for d in self.manifest["decoders"]})
            raise ValueError(
                f"this export has no decoder for {slots} point slots (multimask_output={multimask}, box={box}, "
                f"mask_input={mask}) on {platform}; it has point slots {slots_have}: export with more --point-slots"
            )
        chunk = self.manifest["cpu_prompt_chunk"]
        if platform == "cpu" and bucket > chunk and chunk in have:
            step = chunk
        else:
            step = bucket if bucket in have else max(p for p in have if p <= bucket)
        return step, have[step]
