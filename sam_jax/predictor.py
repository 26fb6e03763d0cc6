"""``SamPredictor``: the reference's stateful prompt API as a thin wrapper over :mod:`sam_jax.inference`.

The only state is the current image's embedding and sizes; every computation is a jitted pure
function of ``(params, inputs)``.
"""

from __future__ import annotations

import numpy as np

from sam_jax import inference
from sam_jax.images import as_rgb_uint8
from sam_jax.modeling.sam import Sam, postprocess_matrices
from sam_jax.prompts import check_box, check_mask_input, check_points
from sam_jax.transforms import apply_boxes, apply_coords, resize_image


class SamPredictor:
    """Predict masks for an image from points, a box and/or a previous low-res mask.

    Same names, arguments and outputs as ``segment_anything.SamPredictor``.
    """

    def __init__(self, sam_model: Sam) -> None:
        if not isinstance(sam_model, Sam):
            raise TypeError(f"SamPredictor needs a sam_jax Sam model, got {type(sam_model).__name__}")
        self.model = sam_model
        self.graphdef, self.params = inference.split(sam_model)
        self.img_size = sam_model.config.img_size
        self.mask_size = sam_model.config.prompt_encoder.mask_input_size
        self.mask_threshold = sam_model.config.mask_threshold
        self.reset_image()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of ``image``: ``(H, W, 3)`` uint8 in ``image_format`` ("RGB" or
        "BGR"); grayscale ``(H, W)`` / ``(H, W, 1)`` and RGBA are accepted (see
        :func:`sam_jax.images.as_rgb_uint8`)."""
        image = as_rgb_uint8(image, image_format)
        resized = resize_image(image, self.img_size)
        h, w = resized.shape[:2]
        padded = np.zeros((1, self.img_size, self.img_size, 3), np.uint8)
        padded[0, :h, :w] = resized
        self.features = inference.encode_images(self.graphdef, self.params, padded, np.array([[h, w]], np.int32))[0]
        self.original_size = image.shape[:2]
        self.input_size = (h, w)
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        coords = labels = boxes = masks_in = None
        if point_coords is not None or point_labels is not None:
            point_coords, point_labels = check_points(point_coords, point_labels)
            coords = apply_coords(point_coords, self.original_size, self.img_size)[None]
            labels = point_labels[None]
        if box is not None:
            boxes = apply_boxes(check_box(box, single=True), self.original_size, self.img_size)[None]
        if mask_input is not None:
            masks_in = check_mask_input(mask_input, self.mask_size, single=True)
        prompts = inference.make_prompts(coords, labels, boxes, masks_in, num_prompts=1, mask_size=self.mask_size)
        low_res, iou = inference.decode(self.graphdef, self.params, self.features, prompts, bool(multimask_output))
        masks = self._upscale(low_res)
        if not return_logits:
            masks = masks > self.mask_threshold
        return np.asarray(masks[0]), np.asarray(iou[0]), np.asarray(low_res[0])

    def _upscale(self, low_res):
        rows, cols = postprocess_matrices(low_res.shape[-1], self.img_size, self.input_size, tuple(self.original_size))
        return inference.upscale_masks(low_res, rows, cols)

    def get_image_embedding(self) -> np.ndarray:
        """The current image embedding, ``(1, 256, 64, 64)`` as the reference returns it (NCHW)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return np.asarray(self.features).transpose(2, 0, 1)[None]

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None
