"""``SAM2AutomaticMaskGenerator``: SAM 2's automatic mask generation (reference
``sam2/automatic_mask_generator.py``) on the shared on-device machinery of
:class:`~sam_jax.amg.generator.SamAutomaticMaskGenerator` (jitted scoring, stability, boxes,
crop-edge rejection and NMS, sharded over the mesh; rendering and encoding of the survivors).

Only what SAM 2 does differently lives here:

- a crop is squashed to the model's square input (:func:`sam_jax.models.sam2.transforms.canvas_batch`)
  and encoded by :meth:`Sam2.embed <sam_jax.models.sam2.model.Sam2.embed>` (image embedding plus
  the high-resolution levels);
- grid points go to the model frame normalised by the crop size (``normalize_coords``);
- a point batch is decoded by :meth:`Sam2.decode_prompts <sam_jax.models.sam2.model.Sam2.decode_prompts>`
  with ``multimask_output`` as given (one mask per point without it, chosen by the decoder's
  dynamic multimask rule), and with ``use_m2m`` each mask is decoded again from its point with its
  own low-res logits (clamped to [-32, 32]) as mask prompt, single-mask (the reference's
  ``refine_with_m2m``): the refined logits and IoU are the ones filtered, scored and rendered;
- low-res logits reach the crop by one bilinear resize (:meth:`Resize.direct
  <sam_jax.core.resize.Resize.direct>`);
- masks are thresholded at the generator's ``mask_threshold`` (stability score included);
- ``point_coords`` are float32, as the reference's tensors.

As the reference, ``generate`` does not run ``postprocess_small_regions``: SAM 2 spends
``min_mask_region_area`` on its predictor's hole / sprinkle removal of every decoded mask's low-res
logits (threshold 0, the predictor's default, whatever the generator's ``mask_threshold``), before
they are upscaled, scored and filtered; the m2m refinement is fed the logits from before that
clean-up, as in the reference. The clean-up is connected-component labelling, which has no XLA
kernel: it runs on the host (:func:`~sam_jax.predictors.sam2.fill_holes_and_sprinkles`, OpenCV)
through ``jax.pure_callback`` inside the jitted step, only when ``min_mask_region_area > 0``. The
reference needs its CUDA extension for it and skips it (with a warning) without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float

from sam_jax.amg.generator import CANVAS_MULTIPLE, SamAutomaticMaskGenerator, _bucket, _Crop
from sam_jax.core.decode import GraphDef, Params, in_chunks
from sam_jax.core.image import Features
from sam_jax.core.prompts import Prompts
from sam_jax.core.resize import Resize
from sam_jax.models.sam2.model import Sam2
from sam_jax.models.sam2.transforms import canvas_batch, transform_coords
from sam_jax.ops.policy import ExecutionPolicy
from sam_jax.predictors.sam2 import fill_holes_and_sprinkles

# SAM2ImagePredictor._predict clamps the low-res logits it returns; m2m feeds those back as mask input.
LOW_RES_CLAMP = 32.0


@dataclasses.dataclass(frozen=True)
class Sam2Decode:
    """SAM 2's prompt step for :func:`sam_jax.amg.generator.score_points` (hashable and equal by
    value, so generators with the same settings share compiled programs)."""

    multimask_output: bool
    use_m2m: bool
    # SAM2ImagePredictor(max_hole_area=max_sprinkle_area=min_mask_region_area) of the reference.
    min_region_area: float = 0.0

    def __call__(
        self,
        graphdef: GraphDef,
        mesh: Mesh,
        policy: ExecutionPolicy,
        params: Params,
        features: Features,
        image_pe: Float[Array, "g g D"],
        prompts: Prompts,
        iou_floor: Float[Array, ""],
    ) -> tuple[Float[Array, "P C m m"], Float[Array, "P C"]]:
        """Low-res logits ``(P, C, m, m)`` and IoU predictions ``(P, C)`` of ``P`` point prompts
        (``C`` = 3 with ``multimask_output``, else 1); with ``use_m2m`` the refined ones."""
        del mesh, iou_floor  # every mask is decoded (and, with m2m, refined) before the IoU filter
        model = nnx.merge(graphdef, params)

        def decode(multimask: bool):
            def step(pr: Prompts) -> tuple[jax.Array, jax.Array]:
                low, iou, _ = model.decode_prompts(features, pr, multimask, image_pe)
                return low, iou

            return step

        low, iou = in_chunks(decode(self.multimask_output), prompts, policy.prompt_chunk(prompts.coords.shape[0]))
        if not self.use_m2m:
            return self._clean(low), iou
        p, c, m = low.shape[0], low.shape[1], low.shape[-1]
        repeat = lambda x: jnp.repeat(x, c, axis=0)  # mask k of point i is row i * c + k, as flatten(0, 1)
        refine = Prompts(
            coords=repeat(prompts.coords),
            labels=repeat(prompts.labels),
            point_valid=repeat(prompts.point_valid),
            boxes=None,
            box_valid=None,
            mask_input=jnp.clip(low, -LOW_RES_CLAMP, LOW_RES_CLAMP).reshape(p * c, m, m),
            mask_valid=jnp.ones((p * c,), bool),
        )
        low, iou = in_chunks(decode(False), refine, policy.prompt_chunk(p * c))
        return self._clean(low.reshape(p, c, m, m)), iou.reshape(p, c)

    def _clean(self, low: Float[Array, "P C m m"]) -> Float[Array, "P C m m"]:
        """The reference predictor's hole filling and sprinkle removal (threshold 0), on the host."""
        if self.min_region_area <= 0:
            return low
        area = self.min_region_area
        fill = lambda x: fill_holes_and_sprinkles(x, 0.0, area, area)
        return jax.pure_callback(fill, jax.ShapeDtypeStruct(low.shape, jnp.float32), low)


class SAM2AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """Masks for a whole image from a grid of point prompts with a SAM 2 model (``sam2``'s
    ``SAM2AutomaticMaskGenerator``): same arguments, defaults and records as the reference; see its
    docstring for their meaning. Extra: ``devices`` (default: every local device) are the mesh the
    work is sharded over.

    ``min_mask_region_area > 0`` fills holes and removes sprinkles of at most that many low-res
    pixels in every decoded mask, as the reference's predictor does (on every platform here; the
    reference needs its CUDA extension). The reference's catch-all ``**kwargs`` is not taken.
    """

    _cleans_final_masks = False

    def __init__(
        self,
        model: Sam2,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        *,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        self._check_model(model)
        ok = isinstance(mask_threshold, (int, float, np.integer, np.floating)) and not isinstance(mask_threshold, bool)
        if not ok or not np.isfinite(mask_threshold):
            raise ValueError(f"mask_threshold must be a finite number, got {mask_threshold!r}")
        for name, value in (("use_m2m", use_m2m), ("multimask_output", multimask_output)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        self.mask_threshold = float(mask_threshold)
        self.use_m2m = bool(use_m2m)
        self.multimask_output = bool(multimask_output)
        super().__init__(
            model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            point_grids=point_grids,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
            devices=devices,
        )
        self._decode = Sam2Decode(self.multimask_output, self.use_m2m, float(self.min_mask_region_area))

    # ------------------------------------------------------------------------ per-family hooks

    def _check_model(self, model: object) -> None:
        if not isinstance(model, Sam2):
            raise TypeError(f"SAM2AutomaticMaskGenerator needs a sam_jax Sam2 model, got {type(model).__name__}")

    def _mask_threshold(self, model: nnx.Module) -> float:
        return self.mask_threshold

    def _canvas_batch(self, images: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
        return canvas_batch(images, self._img_size, size)

    def _model_points(self, points: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
        # The reference's float32 tensor of crop-frame points, normalised by the crop's (h, w).
        return transform_coords(points.astype(np.float32), crop_size, self._img_size, normalize=True)

    def _make_upscale(self, h: int, w: int) -> Resize:
        canvas = (_bucket(h, CANVAS_MULTIPLE), _bucket(w, CANVAS_MULTIPLE))
        return jax.device_put(Resize.direct(self._low_res, (h, w), canvas), self._replicated)

    def _point_coords(self, crop: _Crop, j: int) -> list[list[float]]:
        # float32 points plus the integer crop offset, in float32 (uncrop_points on the tensor).
        point = crop.points[crop.point_idx[j]].astype(np.float32) + np.asarray(crop.box[:2], np.float32)
        return [point.tolist()]
