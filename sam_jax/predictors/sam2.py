"""``SAM2ImagePredictor``: SAM 2's stateful prompt API as a thin wrapper over :mod:`sam_jax.core`.

Same names, arguments and outputs as ``sam2.sam2_image_predictor.SAM2ImagePredictor`` (``sam2``
1.1.0). The only state is the current images' features pytree and sizes; every computation is a
jitted pure function of ``(params, inputs)``, with prompts padded to compile buckets and split
over the mesh's devices like :class:`~sam_jax.predictors.sam.SamPredictor`. Beyond the reference:
:meth:`SAM2ImagePredictor.predict_batch` decodes every image's prompts in one call (the reference
loops over images), and hole filling / sprinkle removal run on every platform (the reference
needs its CUDA extension and silently skips them without it).

What SAM 2 does differently from SAM 1 at this level: the image is squashed to the model's square
input (no aspect-preserving pad, :mod:`sam_jax.models.sam2.transforms`), a box is two points
labelled 2 and 3 ahead of the clicks (then the padding point), masks are resized straight from
256 x 256 to the original size, and low-res logits are returned clamped to [-32, 32].
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import jax
import numpy as np
from jax.sharding import Mesh

from sam_jax.core.decode import postprocess
from sam_jax.core.image import Features, encode
from sam_jax.core.prompts import (
    Prompts,
    check_box,
    check_mask_input,
    check_points,
    drop_absent,
    make_prompts,
    point_bucket,
)
from sam_jax.core.resize import Resize
from sam_jax.io import as_rgb_uint8
from sam_jax.models.sam2.model import IMAGE_EMBED, Sam2
from sam_jax.models.sam2.transforms import canvas_batch, transform_boxes, transform_coords
from sam_jax.predictors.base import PredictorBase
from sam_jax.runtime import sharding

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]
# SAM 2's prompt labels: -1 not a point, 0 background, 1 foreground, 2 / 3 box top-left / bottom-right.
SAM2_LABELS = (-1, 0, 1, 2, 3)
BOX_LABELS = (2, 3)
# SAM2ImagePredictor._predict clamps the low-res logits it returns (not those it upsamples).
LOW_RES_CLAMP = 32.0
# SAM2Transforms.postprocess_masks: filled holes / removed sprinkles get threshold +- this.
FILL_OFFSET = 10.0


def _small_components(binary: np.ndarray, max_area: float) -> np.ndarray:
    """Pixels of ``binary`` (``(H, W)`` bool) in 8-connected components of at most ``max_area``
    pixels (the reference's CUDA ``get_connected_components`` is 8-connected)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is the complement of ``binary``
    return small[labels]


def fill_holes_and_sprinkles(
    logits: np.ndarray, mask_threshold: float, max_hole_area: float, max_sprinkle_area: float
) -> np.ndarray:
    """``SAM2Transforms.postprocess_masks``' clean-up of ``(..., H, W)`` mask logits, per mask:

    - holes: 8-connected components of background (logit <= ``mask_threshold``) with area <=
      ``max_hole_area`` get ``mask_threshold + 10``;
    - sprinkles: 8-connected components of foreground (logit > ``mask_threshold``) with area <=
      ``max_sprinkle_area`` get ``mask_threshold - 10``.

    Both are found on the input logits, as the reference does. A limit <= 0 turns its step off.
    Components touching the border count like any other (the reference does not exclude them).
    """
    logits = np.asarray(logits, np.float32)
    out = logits.copy()
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return out
    flat_in, flat_out = logits.reshape(-1, *logits.shape[-2:]), out.reshape(-1, *logits.shape[-2:])
    hole, sprinkle = np.float32(mask_threshold + FILL_OFFSET), np.float32(mask_threshold - FILL_OFFSET)
    for m, o in zip(flat_in, flat_out, strict=True):
        if max_hole_area > 0:
            o[_small_components(m <= mask_threshold, max_hole_area)] = hole
        if max_sprinkle_area > 0:
            o[_small_components(m > mask_threshold, max_sprinkle_area)] = sprinkle
    return out


def _as_image(image: object, what: str = "image") -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a NumPy array (grayscale and RGBA accepted, see
    :func:`sam_jax.io.as_rgb_uint8`) or a PIL image (converted to RGB)."""
    try:
        from PIL import Image
    except ModuleNotFoundError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be an (H, W, 3) uint8 RGB numpy array or a PIL image, got {type(image).__name__}")
    return as_rgb_uint8(image, "RGB")


def _ndim(x: object) -> int:
    """``np.ndim``, or -1 for ragged nested sequences (the checks that follow name the problem)."""
    try:
        return np.ndim(x)
    except ValueError:
        return -1


class _ImagePrompts:
    """One image's prompts after checking, in the model-input frame: per prompt the point tokens
    (box corners first, then clicks) and their labels, the mask inputs, and the prompt count."""

    def __init__(self, coords: list | None, labels: list | None, masks: np.ndarray | None, count: int) -> None:
        self.coords, self.labels, self.masks, self.count = coords, labels, masks, count

    @property
    def tokens(self) -> int:
        """Point tokens needed, the reference's padding point included."""
        if self.coords is None:
            return 0
        return max(len(c) for c in self.coords) + 1


class SAM2ImagePredictor(PredictorBase):
    """Predict masks for an image from points, a box and/or a previous low-res mask (SAM 2 / 2.1).

    Args:
      sam_model: a sam_jax :class:`~sam_jax.models.sam2.model.Sam2` (``sam_jax.load_sam`` of a
        converted checkpoint, or ``sam_jax.build_sam("sam2.1_hiera_tiny")``).
      mask_threshold: logits above it are mask.
      max_hole_area: fill background components of at most this many low-res pixels (0: off).
      max_sprinkle_area: remove foreground components of at most this many low-res pixels (0: off).
      mesh: where image and prompt batches are split (default: all local devices).
    """

    def __init__(
        self,
        sam_model: Sam2,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        *,
        mesh: Mesh | None = None,
    ) -> None:
        if not isinstance(sam_model, Sam2):
            raise TypeError(f"SAM2ImagePredictor needs a sam_jax Sam2 model, got {type(sam_model).__name__}")
        super().__init__(sam_model, mesh)
        cfg = sam_model.config
        self.image_size = cfg.image_size
        self.mask_size = cfg.prompt_encoder.mask_input_size
        self.mask_threshold = float(mask_threshold)
        self.max_hole_area = float(max_hole_area)
        self.max_sprinkle_area = float(max_sprinkle_area)
        self.reset_predictor()

    # --- images ---------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray | object) -> None:
        """Compute the features of ``image``: ``(H, W, 3)`` uint8 RGB (grayscale ``(H, W)`` and RGBA
        accepted) or a PIL image."""
        self._set_images([_as_image(image)])

    def set_image_batch(self, image_list: Sequence[np.ndarray]) -> None:
        """Compute the features of several images (any sizes) for :meth:`predict_batch`, split over
        the mesh's devices."""
        if not isinstance(image_list, (list, tuple)) or len(image_list) == 0:
            raise TypeError(
                f"image_list must be a non-empty list of (H, W, 3) uint8 RGB arrays, got {type(image_list).__name__}"
                + (" of length 0" if isinstance(image_list, (list, tuple)) else "")
            )
        self._set_images([_as_image(im, f"image_list[{i}]") for i, im in enumerate(image_list)])
        self._is_batch = True

    def _set_images(self, images: list[np.ndarray]) -> None:
        self.reset_predictor()
        n = len(images)
        batch, input_sizes = canvas_batch(images, self.image_size, sharding.padded_batch_size(n, self.mesh))
        batch, input_sizes = sharding.shard_batch((batch, input_sizes), self.mesh)
        self._features = encode(self.graphdef, self.params, batch, input_sizes, self._policy)
        self._orig_hw = [tuple(int(v) for v in im.shape[:2]) for im in images]
        self._is_image_set = True

    @property
    def num_images(self) -> int:
        return len(self._orig_hw) if self._is_image_set else 0

    @property
    def features(self) -> Features | None:
        """The current images' features pytree (channels-last, leading axis padded to the mesh):
        ``image_embed`` ``(B, 64, 64, 256)`` (``no_mem_embed`` added), ``high_res_feats_0``
        ``(B, 256, 256, 32)``, ``high_res_feats_1`` ``(B, 128, 128, 64)``."""
        return self._features

    def get_image_embedding(self) -> np.ndarray:
        """The image embedding, ``(B, 256, 64, 64)`` NCHW as the reference returns it (``B = 1``
        after :meth:`set_image`)."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return np.asarray(self._features[IMAGE_EMBED][: self.num_images]).transpose(0, 3, 1, 2)

    def reset_predictor(self) -> None:
        """Forget the current image(s)."""
        self._is_image_set = False
        self._features: Features | None = None
        self._orig_hw: list[tuple[int, int]] = []
        self._is_batch = False

    # --- prompts --------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> Prediction:
        """Masks for the prompts on the current image.

        Args:
          point_coords: ``(N, 2)`` xy, or ``(B, N, 2)`` for ``B`` objects; pixels of the original
            image when ``normalize_coords``, else coordinates relative to it (in [0, 1]).
          point_labels: ``(N,)`` / ``(B, N)``: 1 foreground, 0 background, -1 ignored, 2 / 3 box corners.
          box: ``(4,)`` or ``(B, 4)`` xyxy, same frame as the points.
          mask_input: ``(1, 256, 256)`` or ``(B, 1, 256, 256)`` low-res logits from a previous call.
          multimask_output: three masks per object, or one (the best of the three where the
            single-mask output is unstable: ``dynamic_multimask_via_stability``).
          return_logits: masks as float logits instead of 0/1.
          normalize_coords: see ``point_coords``.

        Returns:
          masks ``(C, H, W)`` float32 (0/1, or logits), iou_predictions ``(C,)`` and low_res_masks
          ``(C, 256, 256)`` (logits clamped to [-32, 32]); with ``B > 1`` objects each has a
          leading ``B`` axis, as the reference's ``squeeze(0)`` leaves them.
        """
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if self.num_images != 1:
            raise ValueError(f"predict works on one image, but {self.num_images} are set; use predict_batch")
        prompts = self._prep_prompts(0, point_coords, point_labels, box, mask_input, normalize_coords)
        n = prompts.count
        built = self._make_prompts(prompts, pad_to=sharding.padded_batch_size(n, self.mesh))
        low_res, iou = self._decoder.decode(
            self.params,
            jax.tree.map(lambda x: x[0], self._features),
            sharding.shard_batch(drop_absent(built), self.mesh),
            bool(multimask_output),
            image_pe=self._image_pe,
            policy=self._policy,
        )
        return self._finish(0, low_res, iou, prompts, return_logits)

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray] | None = None,
        point_labels_batch: Sequence[np.ndarray] | None = None,
        box_batch: Sequence[np.ndarray] | None = None,
        mask_input_batch: Sequence[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for every image of :meth:`set_image_batch`, all decoded in one call.

        Each ``*_batch`` is None or a sequence with one entry per image (an entry may be None),
        holding what :meth:`predict` takes for that image; prompt counts may differ. Returns lists
        (one entry per image) of masks, iou_predictions and low_res_masks.
        """
        if not self._is_batch:
            raise RuntimeError("predict_batch works after .set_image_batch(...); use predict after .set_image(...)")
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image_batch(...) before mask prediction.")
        n_img = self.num_images
        args = {
            "point_coords_batch": point_coords_batch,
            "point_labels_batch": point_labels_batch,
            "box_batch": box_batch,
            "mask_input_batch": mask_input_batch,
        }
        for name, value in args.items():
            if value is not None and (not isinstance(value, (list, tuple)) or len(value) != n_img):
                got = f"length {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
                raise ValueError(f"{name} must be a list with one entry per image ({n_img}), got {got}")
        pick = lambda value, i: None if value is None else value[i]
        per_image = [
            self._prep_prompts(
                i,
                pick(point_coords_batch, i),
                pick(point_labels_batch, i),
                pick(box_batch, i),
                pick(mask_input_batch, i),
                normalize_coords,
            )
            for i in range(n_img)
        ]
        slots = point_bucket(max(p.tokens for p in per_image))
        width = point_bucket(max(p.count for p in per_image))
        built = [self._make_prompts(p, pad_to=width, num_slots=slots) for p in per_image]
        size = sharding.padded_batch_size(n_img, self.mesh)
        stacked = Prompts(*(sharding.pad_batch(np.stack(f), size) for f in zip(*built, strict=True)))
        low_res, iou = self._decoder.decode_batch(
            self.params,
            self._features,
            sharding.shard_batch(drop_absent(stacked), self.mesh),
            bool(multimask_output),
            image_pe=self._image_pe,
            policy=self._policy,
        )
        results = [self._finish(i, low_res[i], iou[i], p, return_logits) for i, p in enumerate(per_image)]
        return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]

    # --- internals ------------------------------------------------------------------------------

    def _prep_prompts(self, image: int, point_coords, point_labels, box, mask_input, normalize_coords) -> _ImagePrompts:
        """Check one image's prompts and bring them to the model-input frame (``_prep_prompts`` and
        the box-as-points step of ``_predict`` in the reference)."""
        orig_hw, normalize = self._orig_hw[image], bool(normalize_coords)
        clicks = labels = boxes = masks = None
        if point_coords is not None or point_labels is not None:
            batched = _ndim(point_coords) == 3
            clicks, labels = check_points(point_coords, point_labels, batched=batched, valid_labels=SAM2_LABELS)
            if not batched:
                clicks, labels = clicks[None], labels[None]
            clicks = transform_coords(clicks, orig_hw, self.image_size, normalize=normalize)
        if box is not None:
            boxes = transform_boxes(check_box(box, single=False), orig_hw, self.image_size, normalize=normalize)
        if mask_input is not None:
            if _ndim(mask_input) not in (3, 4):
                m = self.mask_size
                raise ValueError(
                    f"mask_input must be (1, {m}, {m}) or (B, 1, {m}, {m}) low-res logits (a previous "
                    f"low_res_masks), got shape {np.shape(mask_input)}"
                )
            masks = check_mask_input(mask_input, self.mask_size, single=np.ndim(mask_input) == 3)
        counts = {name: len(x) for name, x in (("points", clicks), ("boxes", boxes)) if x is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(f"point_coords and box must describe the same number of objects, got {counts}")
        count = next(iter(counts.values()), None)
        if masks is not None:
            if count is None:
                count = len(masks)
            elif len(masks) not in (1, count):
                raise ValueError(f"mask_input must hold 1 or {count} masks (one per object), got {len(masks)}")
            masks = np.broadcast_to(masks, (count, *masks.shape[1:]))
        count = 1 if count is None else count  # no prompt at all: one prompt without tokens, as the reference
        coords = token_labels = None
        if clicks is not None or boxes is not None:
            parts_c = [x for x in (boxes, clicks) if x is not None]  # box corners ahead of the clicks
            parts_l = []
            if boxes is not None:
                parts_l.append(np.broadcast_to(np.array(BOX_LABELS, np.int32), (count, 2)))
            if labels is not None:
                parts_l.append(labels)
            coords = list(np.concatenate(parts_c, axis=1))
            token_labels = list(np.concatenate(parts_l, axis=1))
        return _ImagePrompts(coords, token_labels, masks, count)

    def _make_prompts(self, p: _ImagePrompts, *, pad_to: int, num_slots: int | None = None) -> Prompts:
        # Boxes travel as points, so make_prompts sees none and appends the padding point to every
        # prompt with points (the reference's prompt encoder is always called with boxes=None).
        return make_prompts(
            p.coords,
            p.labels,
            None,
            p.masks,
            num_prompts=p.count,
            mask_size=self.mask_size,
            num_slots=num_slots,
            pad_prompts_to=pad_to,
        )

    def _finish(
        self, image: int, low_res: jax.Array, iou: jax.Array, prompts: _ImagePrompts, return_logits: bool
    ) -> Prediction:
        resize = self._cached_resize(self._orig_hw[image], lambda hw: Resize.direct(self.mask_size, hw))
        upsample_from = low_res
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            host = np.asarray(jax.device_get(low_res))
            upsample_from = fill_holes_and_sprinkles(
                host, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area
            )
        masks = postprocess(upsample_from, resize, np.float32(self.mask_threshold), bool(return_logits))
        masks, iou, low_res = jax.device_get((masks, iou, low_res))
        n = prompts.count
        masks = np.asarray(masks[:n], np.float32)
        iou = np.asarray(iou[:n], np.float32)
        low_res = np.clip(np.asarray(low_res[:n], np.float32), -LOW_RES_CLAMP, LOW_RES_CLAMP)
        if n == 1:  # the reference's squeeze(0)
            return masks[0], iou[0], low_res[0]
        return masks, iou, low_res
