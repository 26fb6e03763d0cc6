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
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export

from sam_jax.core.prompts import check_box, check_mask_input, check_points, make_prompts
from sam_jax.core.transforms import apply_boxes, apply_coords, resize_image
from sam_jax.export import manifest as mf
from sam_jax.io import as_rgb_uint8

SAM2_LABELS = (-1, 0, 1, 2, 3)
SAM2_BOX_LABELS = (2, 3)


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
        self._decoders = {d["name"]: d for d in manifest["decoders"]}
        self._loaded: dict[str, export.Exported] = {}
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
        """Masks for one prompt on the current image, as ``SamPredictor.predict`` (SAM 2: as
        ``SAM2ImagePredictor.predict`` for one object: float 0/1 masks, low-res logits clamped).

        Args: ``point_coords`` ``(N, 2)`` xy pixels, ``point_labels`` ``(N,)``, ``box`` ``(4,)``
        xyxy, ``mask_input`` ``(1, m, m)`` low-res logits, in the original image's frame.

        Returns: masks ``(C, H, W)``, iou_predictions ``(C,)``, low_res_logits ``(C, m, m)``.
        """
        if self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        hw, s = self.original_size, self.img_size
        labels_ok = SAM2_LABELS if self.family == "sam2" else (-1, 0, 1)
        coords = labels = boxes = masks = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels, valid_labels=labels_ok)
        if box is not None:
            boxes = check_box(box, single=True)[None]
        if mask_input is not None:
            masks = check_mask_input(mask_input, self.mask_size, single=True)
        if coords is None and boxes is None and masks is None:
            raise ValueError("give at least one of point_coords, box or mask_input")
        if self.family == "sam":
            c = None if coords is None else [apply_coords(coords, hw, s)]
            b = None if boxes is None else apply_boxes(boxes, hw, s)
            prompts = make_prompts(
                c, None if labels is None else [labels], b, masks, num_prompts=1, mask_size=self.mask_size
            )
        else:
            parts_c, parts_l = [], []
            if boxes is not None:
                parts_c.append(self._sam2.transform_boxes(boxes, hw, s)[0])
                parts_l.append(np.array(SAM2_BOX_LABELS, np.int32))
            if coords is not None:
                parts_c.append(self._sam2.transform_coords(coords, hw, s))
                parts_l.append(labels)
            c = [np.concatenate(parts_c)] if parts_c else None
            lab = [np.concatenate(parts_l)] if parts_l else None
            prompts = make_prompts(c, lab, None, masks, num_prompts=1, mask_size=self.mask_size)
        has_box, has_mask = bool(prompts.box_valid.any()), bool(prompts.mask_valid.any())
        program, entry = self._decoder(bool(multimask_output), prompts.coords.shape[1], has_box, has_mask, 1)
        inputs = dict(
            zip(
                ("point_coords", "point_labels", "point_valid", "boxes", "box_valid", "mask_input", "mask_valid"),
                prompts,
                strict=True,
            )
        )
        inputs.update(zip(self._feature_names(), self.features, strict=True))
        inputs["size_like"] = np.zeros((*hw, 0), np.uint8)
        args = [inputs[i["name"]] for i in entry["inputs"]]
        masks_out, logits, iou, low_res = jax.device_get(program.call(self._weights, self._image_pe, *args))
        if return_logits:
            out = np.asarray(logits[0])
        elif self.family == "sam2":
            out = np.asarray(masks_out[0], np.float32)
        else:
            out = np.asarray(masks_out[0])
        return out, np.asarray(iou[0]), np.asarray(low_res[0])

    def _feature_names(self) -> list[str]:
        return [o["name"] for o in self.manifest["encoders"][0]["outputs"]]

    def _decoder(
        self, multimask: bool, slots: int, box: bool, mask: bool, prompts: int
    ) -> tuple[export.Exported, dict]:
        for name, d in self._decoders.items():
            hi = d["max_prompts"]
            if (d["multimask_output"], d["num_slots"], d["box"], d["mask_input"]) == (multimask, slots, box, mask) and (
                d["min_prompts"] <= prompts and (hi is None or prompts <= hi)
            ):
                if name not in self._loaded:
                    self._loaded[name] = self._program(name)
                return self._loaded[name], d
        have = sorted({d["num_slots"] for d in self._decoders.values()})
        raise ValueError(
            f"this export has no decoder for {slots} point slots (multimask_output={multimask}, box={box}, "
            f"mask_input={mask}); it has point slots {have}: export with more --point-slots"
        )
