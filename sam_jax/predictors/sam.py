"""``SamPredictor``: the reference's stateful prompt API as a thin wrapper over :mod:`sam_jax.core`.

The only state is the current images' embeddings and sizes; every computation is a jitted pure
function of ``(params, inputs)``. Beyond the reference: many prompts per image in one call
(:meth:`SamPredictor.predict_batch`, uneven point counts allowed) and many images per call
(:meth:`SamPredictor.set_image_batch` + :meth:`SamPredictor.predict_images`), both split over all
local devices along the batch axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from sam_jax.core.decode import postprocess
from sam_jax.core.image import Features, canvas_batch, encode
from sam_jax.core.prompts import (
    Prompts,
    check_box,
    check_mask_input,
    check_point_sets,
    check_points,
    drop_absent,
    make_prompts,
    point_bucket,
)
from sam_jax.core.resize import Resize
from sam_jax.core.transforms import apply_boxes, apply_coords
from sam_jax.io import as_rgb_uint8
from sam_jax.models.sam.model import Sam
from sam_jax.predictors.base import PredictorBase
from sam_jax.runtime import sharding

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]


class SamPredictor(PredictorBase):
    """Predict masks for an image from points, a box and/or a previous low-res mask.

    Same names, arguments and outputs as ``segment_anything.SamPredictor``. ``mesh`` (default:
    all local devices) is where image and prompt batches are split.
    """

    def __init__(self, sam_model: Sam, *, mesh: Mesh | None = None) -> None:
        if not isinstance(sam_model, Sam):
            raise TypeError(f"SamPredictor needs a sam_jax Sam model, got {type(sam_model).__name__}")
        super().__init__(sam_model, mesh)
        self.img_size = sam_model.config.img_size
        self.mask_size = sam_model.config.prompt_encoder.mask_input_size
        self.mask_threshold = sam_model.config.mask_threshold
        self._mask_threshold = np.float32(self.mask_threshold)
        self.reset_image()

    # --- images ---------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of ``image``: ``(H, W, 3)`` uint8 in ``image_format`` ("RGB" or
        "BGR"); grayscale ``(H, W)`` / ``(H, W, 1)`` and RGBA are accepted (see
        :func:`sam_jax.io.as_rgb_uint8`)."""
        self.set_image_batch([image], image_format)

    def set_image_batch(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> None:
        """Embed several images at once (any sizes), split over the mesh's devices."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, Sequence) or len(images) == 0:
            raise ValueError(
                f"images must be a non-empty sequence of (H, W, 3) uint8 arrays, got {type(images).__name__}"
            )
        rgb = [as_rgb_uint8(im, image_format) for im in images]
        n = len(rgb)
        batch, input_sizes = canvas_batch(rgb, self.img_size, sharding.padded_batch_size(n, self.mesh))
        batch, input_sizes_dev = sharding.shard_batch((batch, input_sizes), self.mesh)
        self._features: Features | None = encode(self.graphdef, self.params, batch, input_sizes_dev, self._policy)
        self._original_sizes = [tuple(im.shape[:2]) for im in rgb]
        self._input_sizes = [tuple(int(v) for v in hw) for hw in input_sizes[:n]]
        self.is_image_set = True

    @property
    def num_images(self) -> int:
        return len(self._original_sizes) if self.is_image_set else 0

    @property
    def features(self) -> jax.Array | None:
        """Embedding ``(g, g, 256)`` of the (single) current image, channels-last."""
        return self._features["image_embed"][0] if self.is_image_set else None

    @property
    def original_size(self) -> tuple[int, int] | None:
        return self._original_sizes[0] if self.is_image_set else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self._input_sizes[0] if self.is_image_set else None

    def get_image_embedding(self) -> np.ndarray:
        """The current image embedding, ``(1, 256, 64, 64)`` as the reference returns it (NCHW)."""
        self._require_single_image("get_image_embedding")
        return np.asarray(self.features).transpose(2, 0, 1)[None]

    def get_image_state(self) -> dict[str, np.ndarray]:
        """The current (single) image's cached state as host arrays, to store (for instance with
        ``np.savez``) and restore later with :meth:`set_image_state` without re-encoding:
        ``{"features/<name>": array, ..., "original_size": (2,), "input_size": (2,)}``."""
        self._require_single_image("get_image_state")
        feats = jax.device_get(self._image_features(0))
        out = {f"features/{k}": np.asarray(v) for k, v in feats.items()}
        out["original_size"] = np.asarray(self._original_sizes[0], np.int64)
        out["input_size"] = np.asarray(self._input_sizes[0], np.int64)
        return out

    def set_image_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`get_image_state` returned (from this model: shapes are checked)."""
        self.reset_image()
        try:
            feats = {k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("features/")}
            original = tuple(int(v) for v in np.asarray(state["original_size"]).reshape(2))
            input_size = tuple(int(v) for v in np.asarray(state["input_size"]).reshape(2))
        except (KeyError, ValueError, AttributeError, IndexError) as e:
            raise ValueError(f"not an image state from get_image_state: {e}") from e
        g = self.model.config.prompt_encoder.image_embedding_size
        want = (g, g, self.model.config.prompt_encoder.embed_dim)
        if set(feats) != {"image_embed"} or feats["image_embed"].shape != want:
            got = {k: v.shape for k, v in feats.items()}
            raise ValueError(f"image state does not fit this model: expected image_embed {want}, got {got}")
        emb = feats["image_embed"].astype(np.float32)[None]
        padded = sharding.pad_batch(emb, sharding.padded_batch_size(1, self.mesh))
        self._features = {"image_embed": sharding.shard_batch(padded, self.mesh)}
        self._original_sizes = [original]
        self._input_sizes = [input_size]
        self.is_image_set = True

    def reset_image(self) -> None:
        """Forget the current image(s)."""
        self.is_image_set = False
        self._features = None
        self._original_sizes: list[tuple[int, int]] = []
        self._input_sizes: list[tuple[int, int]] = []

    # --- prompts --------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Prediction:
        """Masks for one set of prompts on the current image.

        Args:
          point_coords: ``(N, 2)`` xy pixels in the original image, or None.
          point_labels: ``(N,)`` 1 foreground, 0 background, -1 ignored point; needed with points.
          box: ``(4,)`` xyxy in the original image, or None.
          mask_input: ``(1, 256, 256)`` low-res logits from a previous call, or None.
          multimask_output: three masks (True) or one.
          return_logits: return float logits instead of boolean masks.

        Returns:
          masks ``(C, H, W)`` (bool, or float32 logits), iou_predictions ``(C,)`` float32, and
          low_res_logits ``(C, 256, 256)`` float32.
        """
        self._require_single_image("predict")
        coords = labels = boxes = masks_in = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels)
            coords, labels = coords[None], labels[None]
        if box is not None:
            boxes = check_box(box, single=True)[None]
        if mask_input is not None:
            masks_in = check_mask_input(mask_input, self.mask_size, single=True)
        masks, iou, low_res = self._predict_one_image(
            0, coords, labels, boxes, masks_in, multimask_output, return_logits
        )
        return masks[0], iou[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | Sequence[np.ndarray] | None = None,
        point_labels: np.ndarray | Sequence[np.ndarray] | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Prediction:
        """``B`` prompts on the current image in one call; each prompt's result equals what
        :meth:`predict` gives for it alone.

        Args:
          point_coords: ``(B, N, 2)``, or a length-``B`` sequence of ``(N_i, 2)`` arrays (uneven
            counts; ``N_i`` may be 0 when a box is given), or None.
          point_labels: ``(B, N)`` or a sequence of ``(N_i,)``, matching ``point_coords``.
          boxes: ``(B, 4)`` xyxy, or None.
          mask_input: ``(B, 1, 256, 256)`` low-res logits, or None.

        Returns:
          masks ``(B, C, H, W)``, iou_predictions ``(B, C)``, low_res_logits ``(B, C, 256, 256)``.
        """
        self._require_single_image("predict_batch")
        coords, labels, boxes, masks_in = self._check_batch(point_coords, point_labels, boxes, mask_input)
        return self._predict_one_image(0, coords, labels, boxes, masks_in, multimask_output, return_logits)

    def predict_images(
        self,
        prompts: Sequence[Mapping[str, object]],
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> list[Prediction]:
        """Prompts for every image of :meth:`set_image_batch`, decoded together on the mesh.

        ``prompts[i]`` holds :meth:`predict_batch`'s keyword arguments (``point_coords``,
        ``point_labels``, ``boxes``, ``mask_input``) for image ``i``; counts may differ between
        images. Returns one ``(masks, iou_predictions, low_res_logits)`` per image.
        """
        if not self.is_image_set:
            raise RuntimeError("Images must be set with .set_image_batch(...) before mask prediction.")
        if len(prompts) != self.num_images:
            raise ValueError(f"expected prompts for {self.num_images} images, got {len(prompts)}")
        allowed = {"point_coords", "point_labels", "boxes", "mask_input"}
        checked = []
        for i, p in enumerate(prompts):
            if not isinstance(p, Mapping) or set(p) - allowed:
                raise ValueError(f"prompts[{i}] must be a mapping with keys from {sorted(allowed)}, got {p!r:.80}")
            checked.append(
                self._check_batch(p.get("point_coords"), p.get("point_labels"), p.get("boxes"), p.get("mask_input"))
            )
        counts = [_num_prompts(*c) for c in checked]
        slots = point_bucket(max(_max_tokens(*c) for c in checked))
        width = point_bucket(max(counts))
        batch = [
            self._prompts(i, *c, num_prompts=n, num_slots=slots, pad_to=width)
            for i, (c, n) in enumerate(zip(checked, counts, strict=True))
        ]
        size = sharding.padded_batch_size(self.num_images, self.mesh)
        stacked = Prompts(*(sharding.pad_batch(np.stack(f), size) for f in zip(*batch, strict=True)))
        low_res, iou = self._decoder.decode_batch(
            self.params,
            self._features,
            sharding.shard_batch(drop_absent(stacked), self.mesh),
            bool(multimask_output),
            image_pe=self._image_pe,
            policy=self._policy,
        )
        return [
            self._finish(i, low_res[i], iou[i], n, return_logits)
            for i, n in zip(range(self.num_images), counts, strict=False)
        ]

    # --- internals ------------------------------------------------------------------------------

    def _require_single_image(self, what: str) -> None:
        if not self.is_image_set:
            raise RuntimeError(f"An image must be set with .set_image(...) before {what}.")
        if self.num_images != 1:
            raise ValueError(f"{what} works on one image, but {self.num_images} are set; use predict_images")

    def _check_batch(self, point_coords, point_labels, boxes, mask_input):
        coords = labels = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_point_sets(point_coords, point_labels)
        if boxes is not None:
            boxes = check_box(boxes, single=False)
        if mask_input is not None:
            mask_input = check_mask_input(mask_input, self.mask_size, single=False)
        sizes = {len(x) for x in (coords, boxes, mask_input) if x is not None}
        if len(sizes) > 1:
            raise ValueError(
                "point_coords, boxes and mask_input must have the same batch size B, got "
                f"{[None if x is None else len(x) for x in (coords, boxes, mask_input)]}"
            )
        if not sizes:
            raise ValueError("give at least one of point_coords, boxes or mask_input")
        if boxes is None and coords is not None and any(len(c) == 0 for c in coords):
            raise ValueError("a prompt without a box needs at least one point (or a mask_input for all)")
        return coords, labels, boxes, mask_input

    def _prompts(self, image: int, coords, labels, boxes, masks_in, *, num_prompts, num_slots=None, pad_to=None):
        original = self._original_sizes[image]
        if coords is not None:
            coords = [apply_coords(c, original, self.img_size) for c in coords]
        if boxes is not None:
            boxes = apply_boxes(boxes, original, self.img_size)
        return make_prompts(
            coords,
            labels,
            boxes,
            masks_in,
            num_prompts=num_prompts,
            mask_size=self.mask_size,
            num_slots=num_slots,
            pad_prompts_to=pad_to,
        )

    def _predict_one_image(self, image, coords, labels, boxes, masks_in, multimask_output, return_logits):
        n = _num_prompts(coords, labels, boxes, masks_in)
        size = sharding.padded_batch_size(n, self.mesh)
        prompts = self._prompts(image, coords, labels, boxes, masks_in, num_prompts=n, pad_to=size)
        low_res, iou = self._decoder.decode(
            self.params,
            self._image_features(image),
            sharding.shard_batch(drop_absent(prompts), self.mesh),
            bool(multimask_output),
            image_pe=self._image_pe,
            policy=self._policy,
        )
        return self._finish(image, low_res, iou, n, return_logits)

    def _image_features(self, image: int) -> Features:
        return jax.tree.map(lambda x: x[image], self._features)

    def _finish(self, image: int, low_res: jax.Array, iou: jax.Array, n: int, return_logits: bool) -> Prediction:
        resize = self._cached_resize(
            self._original_sizes[image], lambda hw: Resize.make(self.mask_size, self.img_size, hw)
        )
        masks = postprocess(low_res, resize, self._mask_threshold, bool(return_logits))
        masks, iou, low_res = jax.device_get((masks, iou, low_res))
        return masks[:n], iou[:n], low_res[:n]


def _num_prompts(coords, labels, boxes, masks_in) -> int:
    return next(len(x) for x in (coords, boxes, masks_in) if x is not None)


def _max_tokens(coords, labels, boxes, masks_in) -> int:
    if coords is None:
        return 0
    return max(len(c) for c in coords) + (1 if boxes is None else 0)
