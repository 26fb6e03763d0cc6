"""``SamAutomaticMaskGenerator``: the reference's automatic mask generation, with the heavy math
on the device and sharded over a mesh of every local device.

Per crop, each step decodes ``devices x points_per_batch`` grid points at once (sharded over the
mesh's ``data`` axis), upsamples the logits to the crop's resolution one mask at a time, and keeps only
per-mask statistics (predicted IoU, stability score, box, a keep flag) plus the 256x256 low-res
logits. Box NMS within the crop and across crops runs on the device over those statistics; only
the surviving masks are rendered at full resolution, bit-packed and sent to the host, where RLE
encoding and small-region removal (OpenCV, as the reference) happen.

Host round-trips: one small read per crop (which candidates survived its NMS) and the final masks.
Shapes are static: point batches are padded (padded slots carry ``keep=False``), canvases are
rounded up to multiples of :data:`CANVAS_MULTIPLE` and mask counts to powers of two, so a new image
size compiles at most once per canvas bucket.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Bool, Float, Int, UInt8

from sam_jax.amg import ops
from sam_jax.amg.crops import build_all_layer_point_grids, generate_crop_boxes
from sam_jax.amg.regions import clean_mask
from sam_jax.amg.rle import area_from_rle, coco_encode_rle, mask_to_rle, paste
from sam_jax.core.decode import GraphDef, Params, attend, in_chunks, split
from sam_jax.core.image import Features, canvas_batch, dense_pe, encode
from sam_jax.core.prompts import Prompts, drop_absent, make_prompts, pow2_at_least
from sam_jax.core.resize import Resize, inside, resize
from sam_jax.core.transforms import apply_coords
from sam_jax.io import as_rgb_uint8
from sam_jax.models.sam.model import Sam
from sam_jax.ops.policy import ExecutionPolicy
from sam_jax.runtime.sharding import DATA_AXIS, batch_sharding, data_mesh, replicated

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Crop canvases are padded up to a multiple of this many pixels, so image sizes share programs.
CANVAS_MULTIPLE = 128


class Candidates(NamedTuple):
    """Per-mask statistics of a point batch, in the crop's frame (a pytree)."""

    iou: Float[Array, " N"]
    stability: Float[Array, " N"]
    boxes: Int[Array, "N 4"]
    keep: Bool[Array, " N"]


def _per_device_map(mesh: Mesh, fn, xs: Any, *shared):
    """``fn(x, *shared)`` for each ``x`` along the leading axis of ``xs`` (an array or a pytree of
    arrays), one at a time, every device looping over its own shard of that axis (``shard_map``: no
    device waits on another and nothing is gathered). ``shared`` pytrees are replicated."""
    specs = (PartitionSpec(DATA_AXIS), *(PartitionSpec() for _ in shared))
    body = lambda x, *c: jax.lax.map(lambda e: fn(e, *c), x)
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(DATA_AXIS))(xs, *shared)


def _decode_needed(
    graphdef: GraphDef,
    mesh: Mesh,
    policy: ExecutionPolicy,
    params: Params,
    features: Features,
    image_pe: Float[Array, "g g D"],
    prompts: Prompts,
    iou_floor: Float[Array, ""],
) -> tuple[Float[Array, "P 3 m m"], Float[Array, "P 3"]]:
    """Multimask logits and IoU predictions of ``P`` point prompts, the logits computed only where
    a mask can pass the IoU filter that follows (``iou > iou_floor``; others are left at zero).

    Upscaling is half the decoder's work. On a blocked (CPU) policy the decision is per prompt,
    each device upscaling its prompts one at a time (a batch of upscalings gains nothing there);
    elsewhere once per step of prompts.
    """
    model = nnx.merge(graphdef, params)
    decoder = model.mask_decoder
    masks = lambda t, im: decoder.predict_masks(t, im)[:, 1:]

    def step(pr: Prompts) -> tuple[jax.Array, jax.Array]:
        tokens, image = attend(model, features, pr, image_pe)
        iou = decoder.predict_iou(tokens)[:, 1:]
        needed = jnp.any(iou > iou_floor, axis=1)
        # zeros_like keeps the image's type under shard_map (varying over the mesh), as cond needs.
        empty = lambda t, im: jnp.zeros_like(im, jnp.float32, jax.eval_shape(masks, t, im).shape)
        if not policy.blocked:
            return jax.lax.cond(jnp.any(needed), masks, empty, tokens, image), iou
        one = lambda x: jax.lax.cond(x[2], masks, empty, x[0][None], x[1][None])[0]
        per_device = lambda t, im, nd: jax.lax.map(one, (t, im, nd))
        spec = PartitionSpec(DATA_AXIS)
        return jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec)(tokens, image, needed), iou

    return in_chunks(step, prompts, policy.prompt_chunk(prompts.coords.shape[0]))


def score_points(
    graphdef: GraphDef,
    mesh: Mesh,
    policy: ExecutionPolicy,
    params: Params,
    features: Features,
    image_pe: Float[Array, "g g D"],
    template: Prompts,
    points: Float[Array, "S 2"],
    valid: Bool[Array, " S"],
    up: Resize,
    crop_box: Int[Array, " 4"],
    image_size: Int[Array, " 2"],
    thr: ops.Thresholds,
    *,
    decode: Callable | None = None,
) -> tuple[Float[Array, "N m m"], Candidates]:
    """Decode ``S`` single-point prompts (model-input frame) and score their ``N = C S`` masks
    (``C`` masks per point, 3 with multimask output).

    Follows the reference's ``_process_batch``: predicted-IoU filter, stability score on the logits
    at crop resolution, threshold, boxes, rejection of boxes near an inner crop edge. Returns the
    low-res logits (kept on the device for rendering survivors later) and :class:`Candidates`.

    ``decode`` is the family's prompt step, with :func:`_decode_needed`'s signature and outputs
    ``(S, C, m, m)`` logits and ``(S, C)`` IoU predictions; None is SAM 1's (:func:`_decode_needed`).

    Called through :func:`jitted_score_points`.
    """
    prompts = template._replace(coords=template.coords.at[:, 0].set(points))
    # Masks that fail the predicted-IoU filter are never used: the decoder skips upscaling for
    # prompts all of whose masks fail it, and the statistics below skip each failing mask.
    iou_floor = jnp.where(thr.use_pred_iou, thr.pred_iou, -jnp.inf)
    decode = _decode_needed if decode is None else decode
    low, iou = decode(graphdef, mesh, policy, params, features, image_pe, prompts, iou_floor)
    c = low.shape[1]
    low = low.reshape(-1, *low.shape[2:])
    iou = iou.reshape(-1)
    keep = jnp.repeat(valid, c) & (iou > iou_floor)

    def mask_stats(x_needed: tuple[jax.Array, jax.Array], u: Resize, t: ops.Thresholds) -> ops.MaskStats:
        x, needed = x_needed
        compute = lambda x: ops.mask_stats(resize(x, u), inside(u), t)
        # zeros_like(x, ...) keeps x's type under shard_map (varying over the mesh), as cond needs.
        skip = lambda x: jax.tree.map(lambda a: jnp.zeros_like(x, a.dtype, a.shape), jax.eval_shape(compute, x))
        return jax.lax.cond(needed, compute, skip, x)

    stats = _per_device_map(mesh, mask_stats, (low, keep), up, thr)
    stability = ops.stability_score(stats.high, stats.low)
    boxes = ops.boxes_from_occupancy(stats.rows, stats.cols)
    keep &= ~thr.use_stability | (stability >= thr.stability)
    keep &= ~ops.near_crop_edge(boxes, crop_box, image_size)
    cands = Candidates(iou, stability, boxes, keep)
    return low, cands


@functools.lru_cache(maxsize=8)
def jitted_score_points(graphdef: GraphDef, mesh: Mesh, policy: ExecutionPolicy, decode: Callable | None = None):
    """:func:`score_points` jitted with ``graphdef``, ``mesh``, ``policy`` and the family's ``decode``
    (hashable, equal by value) bound, one per model and mesh so generators share compiled programs
    (a static graphdef would be re-hashed on every call, which costs milliseconds)."""
    return jax.jit(functools.partial(score_points, graphdef, mesh, policy, decode=decode))


@jax.jit
def crop_nms(cands: Candidates, iou_threshold: Float[Array, ""]) -> tuple[Bool[Array, " N"], Int[Array, " N"]]:
    """Box NMS among the candidates of one crop, by descending predicted IoU (reference
    ``_process_crop``). Returns keep flags and the visiting order."""
    order = ops.nms_order(-cands.iou, valid=cands.keep)
    return ops.nms(cands.boxes, order, cands.keep, iou_threshold), order


@jax.jit
def ranked_nms(
    boxes: Int[Array, "N 4"], keys: Float[Array, "k N"], valid: Bool[Array, " N"], iou_threshold: Float[Array, ""]
) -> tuple[Bool[Array, " N"], Int[Array, " N"]]:
    """Box NMS visiting boxes by ascending ``keys`` rows (first row primary), then index."""
    order = ops.nms_order(*keys, valid=valid)
    return ops.nms(boxes, order, valid, iou_threshold), order


@functools.partial(jax.jit, static_argnums=0)
def render_masks(
    mesh: Mesh, low: Float[Array, "K m m"], up: Resize, mask_threshold: Float[Array, ""]
) -> UInt8[Array, "K Hb Wb8"]:
    """Binary masks on the canvas, bit-packed along rows (``np.unpackbits(..., axis=-1)``)."""

    def render(x: jax.Array, u: Resize, t: jax.Array) -> jax.Array:
        return jnp.packbits((resize(x, u) > t) & inside(u), axis=-1)

    return _per_device_map(mesh, render, low, up, mask_threshold)


@jax.jit
def gather_rows(parts: tuple[Float[Array, "_n m m"], ...], idx: Int[Array, " K"]) -> Float[Array, "K m m"]:
    """Rows ``idx`` of the concatenation of ``parts``, without concatenating them."""
    out = jnp.zeros((idx.shape[0], *parts[0].shape[1:]), parts[0].dtype)
    start = 0
    for part in parts:
        n = part.shape[0]
        local = idx - start
        rows = jnp.take(part, jnp.clip(local, 0, n - 1), axis=0)
        out = jnp.where(((local >= 0) & (local < n))[:, None, None], rows, out)
        start += n
    return out


_boxes_from_occupancy = jax.jit(ops.boxes_from_occupancy)


def _bucket(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclasses.dataclass
class _Crop:
    """One crop of one image while it is processed."""

    box: list[int]
    points: np.ndarray  # (n, 2) float64, crop frame
    up: Resize
    # Filled by _score_crop, one entry per kept mask in within-crop NMS order:
    iou: np.ndarray | None = None
    stability: np.ndarray | None = None
    boxes: np.ndarray | None = None  # (k, 4) xyxy, image frame
    point_idx: np.ndarray | None = None
    low: jax.Array | None = None  # (k padded, m, m) low-res logits


@dataclasses.dataclass
class _Pending:
    """An image whose final masks are being rendered on the device."""

    size: tuple[int, int]
    crops: list[_Crop]
    picks: list[tuple[int, int, int]]  # (crop, row of its kept list, row of its render), output order
    packed: list[jax.Array | None]  # per crop, its rendered masks


class SamAutomaticMaskGenerator:
    """Masks for a whole image from a grid of point prompts (``segment_anything``'s generator).

    Same arguments and records as the reference; see its docstring for their meaning. Extra:
    ``devices`` (default: every local device) are the mesh the work is sharded over.

    What differs per model family is in a few hooks (``_check_model``, ``_mask_threshold``,
    ``_decode``, ``_canvas_batch``, ``_model_points``, ``_make_upscale``, ``_point_coords``); SAM 2's
    generator (:mod:`sam_jax.amg.sam2_generator`) overrides them and shares everything else.
    """

    # The family's prompt step for :func:`score_points` (None: SAM 1's :func:`_decode_needed`).
    _decode: Callable | None = None
    # Whether ``min_mask_region_area`` cleans the final masks (SAM 1's ``postprocess_small_regions``);
    # SAM 2 spends it on the low-res logits instead, inside its prompt step.
    _cleans_final_masks: bool = True

    def __init__(
        self,
        model: nnx.Module,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        self._check_model(model)
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        # Bad settings fail here, naming the parameter, its range and the value, rather than deep
        # inside the grid or NMS code (points_per_side=0 used to end in a ZeroDivisionError).
        # name: (value, low, high or None, integer?, expected); crop_overlap_ratio excludes 1.
        settings = {
            "points_per_side": (points_per_side, 1, None, True, "an integer >= 1"),
            "points_per_batch": (points_per_batch, 1, None, True, "an integer >= 1"),
            "pred_iou_thresh": (pred_iou_thresh, 0, 1, False, "in [0, 1]"),
            "stability_score_thresh": (stability_score_thresh, 0, 1, False, "in [0, 1]"),
            "stability_score_offset": (stability_score_offset, 0, None, False, "a number >= 0"),
            "box_nms_thresh": (box_nms_thresh, 0, 1, False, "in [0, 1]"),
            "crop_n_layers": (crop_n_layers, 0, None, True, "an integer >= 0"),
            "crop_nms_thresh": (crop_nms_thresh, 0, 1, False, "in [0, 1]"),
            "crop_overlap_ratio": (crop_overlap_ratio, 0, 1, False, "in [0, 1)"),
            "crop_n_points_downscale_factor": (crop_n_points_downscale_factor, 1, None, True, "an integer >= 1"),
            "min_mask_region_area": (min_mask_region_area, 0, None, True, "an integer >= 0"),
        }
        for name, (value, low, high, integral, expected) in settings.items():
            if value is None and name == "points_per_side":  # point_grids given instead
                continue
            ok = isinstance(value, (int, np.integer) if integral else (int, float, np.integer, np.floating))
            ok = ok and not isinstance(value, bool) and bool(np.isfinite(value)) and value >= low
            if ok and high is not None:
                ok = value < high if name == "crop_overlap_ratio" else value <= high
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if points_per_side is not None:
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        if len(point_grids) < crop_n_layers + 1:
            raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(point_grids)}")
        self.point_grids = [np.asarray(g, np.float64).reshape(-1, 2) for g in point_grids]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

        self.model = model
        self.mesh = data_mesh(None if devices is None else tuple(devices))
        self._data = batch_sharding(self.mesh)
        self._replicated = replicated(self.mesh)
        graphdef, params = split(model)
        self._graphdef = graphdef
        self._params = jax.device_put(params, self._replicated)
        self._image_pe = dense_pe(graphdef, self._params)
        cfg = model.config
        self._img_size = cfg.img_size
        self._low_res = cfg.prompt_encoder.mask_input_size
        self._thresholds = ops.Thresholds.make(
            self._mask_threshold(model), pred_iou_thresh, stability_score_thresh, stability_score_offset
        )
        self._step = self.mesh.size * points_per_batch
        self._policy = ExecutionPolicy.for_mesh(self.mesh)
        self._upscales: dict[tuple[int, int], Resize] = {}
        self._templates: dict[int, Prompts] = {}

    # --------------------------------------------------------------------- per-family hooks (SAM 1)

    def _check_model(self, model: object) -> None:
        if not isinstance(model, Sam):
            raise TypeError(f"SamAutomaticMaskGenerator needs a sam_jax Sam model, got {type(model).__name__}")

    def _mask_threshold(self, model: nnx.Module) -> float:
        """The logit above which a pixel is mask (SAM 1: the model's ``mask_threshold``)."""
        return model.config.mask_threshold

    def _canvas_batch(self, images: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
        """Crops on the encoder's canvases, padded to ``size`` (SAM 1: long side resized, padded)."""
        return canvas_batch(images, self._img_size, size)

    def _model_points(self, points: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
        """``(n, 2)`` crop-frame points -> the model-input frame."""
        return apply_coords(points, crop_size, self._img_size)

    def _point_coords(self, crop: _Crop, j: int) -> list[list[float]]:
        """The record's ``point_coords`` of kept mask ``j`` of ``crop`` (image frame)."""
        return [(crop.points[crop.point_idx[j]] + np.array(crop.box[:2])).tolist()]

    # ------------------------------------------------------------------------------------ shared

    def _step_sizes(self, n: int) -> list[int]:
        """Points per step for ``n`` points: full steps, then the rest padded to a power of two
        (and a multiple of the devices), so a short grid is not decoded as a full batch."""
        sizes = [self._step] * (n // self._step)
        rest = n - sum(sizes)
        if rest or not sizes:
            d = self.mesh.size
            sizes.append(min(self._step, -(-pow2_at_least(rest) // d) * d))
        return sizes

    def _scorer(self, size: int):
        """The jitted :func:`score_points` and the prompt template for steps of ``size`` points."""
        if size not in self._templates:
            coords, labels = np.zeros((size, 1, 2), np.float32), np.ones((size, 1), np.int32)
            prompts = make_prompts(coords, labels, None, None, num_prompts=size, mask_size=self._low_res)
            self._templates[size] = jax.device_put(drop_absent(prompts), self._data)
        return jitted_score_points(self._graphdef, self.mesh, self._policy, self._decode), self._templates[size]

    # ----------------------------------------------------------------------------------- public

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records for ``image``, ``(H, W, 3)`` uint8 RGB (gray and RGBA are accepted).

        Each record has the reference's keys: ``segmentation`` (per ``output_mode``), ``area``,
        ``bbox`` (XYWH), ``predicted_iou``, ``point_coords`` (``[[x, y]]``), ``stability_score``
        and ``crop_box`` (XYWH).
        """
        image = as_rgb_uint8(image)
        return self._finalize(self._device_stage(image, self._encode([image])[0]))

    def generate_batch(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        """:meth:`generate` for many images: every crop of every image is encoded in batches
        sharded over the mesh, masks are generated image by image with points sharded over the
        mesh, and the host encodes one image's masks while the device works on the next.

        Embeddings of all of ``images`` are held at once: pass a few (e.g. one per device) at a time.
        """
        images = [as_rgb_uint8(im) for im in images]
        embeddings = self._encode(images)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            futures = [
                pool.submit(self._finalize, self._device_stage(im, emb))
                for im, emb in zip(images, embeddings, strict=True)
            ]
            return [f.result() for f in futures]

    # ------------------------------------------------------------------------------ device side

    def _crop_boxes(self, size: tuple[int, int]) -> tuple[list[list[int]], list[int]]:
        return generate_crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)

    def _encode(self, images: list[np.ndarray]) -> list[list[Features]]:
        """Features (no batch axis) of every crop of every image, encoded ``devices`` at a time."""
        d = self.mesh.size
        crops = []
        for im in images:
            boxes, _ = self._crop_boxes(im.shape[:2])
            crops.append([im[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])
        flat = [c for cs in crops for c in cs]
        out = []
        for start in range(0, len(flat), d):
            chunk = flat[start : start + d]
            batch, sizes = self._canvas_batch(chunk, d)
            feats = encode(
                self._graphdef,
                self._params,
                jax.device_put(batch, self._data),
                jax.device_put(sizes, self._data),
                self._policy,
            )
            feats = jax.device_put(feats, self._replicated)
            out.extend(jax.tree.map(lambda x, j=j: x[j], feats) for j in range(len(chunk)))
        it = iter(out)
        return [[next(it) for _ in cs] for cs in crops]

    def _upscale(self, h: int, w: int) -> Resize:
        """Banded resize to an ``h x w`` crop on its canvas bucket (cached, on the mesh)."""
        if (h, w) not in self._upscales:
            self._upscales[(h, w)] = self._make_upscale(h, w)
        return self._upscales[(h, w)]

    def _make_upscale(self, h: int, w: int) -> Resize:
        canvas = (_bucket(h, CANVAS_MULTIPLE), _bucket(w, CANVAS_MULTIPLE))
        return jax.device_put(Resize.make(self._low_res, self._img_size, (h, w), canvas), self._replicated)

    def _score_crop(self, crop: _Crop, features: Features, image_size: tuple[int, int]) -> None:
        """Score every grid point of the crop, keep the survivors of its NMS (one host read)."""
        h, w = crop.box[3] - crop.box[1], crop.box[2] - crop.box[0]
        model_points = self._model_points(crop.points, (h, w))
        n = len(model_points)
        sizes = self._step_sizes(n)
        padded = np.zeros((sum(sizes), 2), np.float32)
        padded[:n] = model_points
        valid = np.arange(sum(sizes)) < n
        box, size = np.asarray(crop.box, np.int32), np.asarray(image_size, np.int32)
        lows, cands = [], []
        for start, step in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
            score, template = self._scorer(step)
            sl = slice(start, start + step)
            low, cand = score(
                self._params,
                features,
                self._image_pe,
                template,
                jax.device_put(padded[sl], self._data),
                jax.device_put(valid[sl], self._data),
                crop.up,
                box,
                size,
                self._thresholds,
            )
            lows.append(low)
            cands.append(cand)
        merged = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *cands)
        keep, order = crop_nms(merged, ops.iou_threshold_f32(self.box_nms_thresh))
        keep, order, iou, stability, boxes = jax.device_get((keep, order, merged.iou, merged.stability, merged.boxes))
        kept = order[keep[order]]
        crop.iou, crop.stability = iou[kept], stability[kept]
        crop.boxes = boxes[kept] + np.tile(crop.box[:2], 2)
        crop.point_idx = kept // (len(merged.iou) // len(padded))  # masks per point
        crop.low = self._gather(lows, kept)

    def _gather(self, lows: list[jax.Array], idx: np.ndarray) -> jax.Array:
        """Low-res logits of candidates ``idx`` (indices over the concatenated steps), padded to a
        power of two (at least one per device) and sharded over the mesh."""
        padded = np.zeros(pow2_at_least(len(idx), self.mesh.size), np.int32)
        padded[: len(idx)] = idx
        return jax.device_put(gather_rows(tuple(lows), padded), self._data)

    def _device_stage(self, image: np.ndarray, embeddings: list[Features]) -> _Pending:
        """Everything up to the final masks, which are left rendering on the device."""
        size = image.shape[:2]
        boxes, layers = self._crop_boxes(size)
        crops = []
        for box, layer, emb in zip(boxes, layers, embeddings, strict=True):
            h, w = box[3] - box[1], box[2] - box[0]
            points = self.point_grids[layer] * np.array([w, h], np.float64)
            crop = _Crop(box, points, self._upscale(h, w))
            self._score_crop(crop, emb, size)
            crops.append(crop)
        picks = [(c, j) for c, crop in enumerate(crops) for j in range(len(crop.iou))]
        if len(crops) > 1:
            picks = self._across_crops(crops, picks)
        packed: list[jax.Array | None] = []
        slot = {}  # (crop, kept row) -> row of that crop's rendered masks
        for c, crop in enumerate(crops):
            rows = [j for cc, j in picks if cc == c]
            slot.update({(c, j): r for r, j in enumerate(rows)})
            low = crop.low if rows == list(range(len(crop.iou))) else self._gather([crop.low], np.asarray(rows))
            packed.append(render_masks(self.mesh, low, crop.up, self._thresholds.mask) if rows else None)
        return _Pending(size, crops, [(c, j, slot[(c, j)]) for c, j in picks], packed)

    def _across_crops(self, crops: list[_Crop], picks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """NMS across crops preferring smaller crops (score ``1 / crop area`` in float32), in the
        reference's order: crops in turn, each in its within-crop NMS order."""
        boxes = np.concatenate([c.boxes for c in crops]).astype(np.int32)
        area = np.array([(crops[c].box[2] - crops[c].box[0]) * (crops[c].box[3] - crops[c].box[1]) for c, _ in picks])
        score = np.float32(1) / area.astype(np.float32)
        n = pow2_at_least(len(picks))
        keys = np.zeros((2, n), np.float32)
        keys[0, : len(picks)] = -score
        keys[1, : len(picks)] = np.arange(len(picks))
        pad = ((0, n - len(picks)), (0, 0))
        keep, order = ranked_nms(
            np.pad(boxes, pad), keys, np.arange(n) < len(picks), ops.iou_threshold_f32(self.crop_nms_thresh)
        )
        keep, order = np.asarray(keep), np.asarray(order)
        return [picks[i] for i in order[keep[order]]]

    # -------------------------------------------------------------------------------- host side

    def _finalize(self, pending: _Pending) -> list[dict[str, Any]]:
        """Fetch the rendered masks, remove small regions, encode and build the records.

        Masks are unpacked one at a time (an RLE output mode never holds more than one
        full-size mask), and small-region removal keeps its cleaned masks bit-packed.
        """
        h, w = pending.size
        packed = [None if p is None else np.asarray(p) for p in pending.packed]

        def unpack(c: int, r: int) -> np.ndarray:
            crop = pending.crops[c]
            ch, cw = crop.box[3] - crop.box[1], crop.box[2] - crop.box[0]
            bits = np.unpackbits(packed[c][r, :ch], axis=-1, count=cw)  # 0/1 bytes, C-contiguous
            return paste(bits.view(bool), crop.box, (h, w))

        masks = (unpack(c, r) for c, _, r in pending.picks)
        boxes = [pending.crops[c].boxes[j] for c, j, _ in pending.picks]
        meta = [(pending.crops[c], j) for c, j, _ in pending.picks]
        if self._cleans_final_masks and self.min_mask_region_area > 0 and meta:
            masks, boxes, meta = self._postprocess_small_regions(masks, boxes, meta, (h, w))
        records = []
        for mask, box, (crop, j) in zip(masks, boxes, meta, strict=True):
            rle = mask_to_rle(mask)
            if self.output_mode == "coco_rle":
                seg = coco_encode_rle(rle)
            elif self.output_mode == "binary_mask":
                seg = mask
            else:
                seg = rle
            records.append(
                {
                    "segmentation": seg,
                    "area": area_from_rle(rle),
                    "bbox": _xywh(box),
                    "predicted_iou": float(crop.iou[j]),
                    "point_coords": self._point_coords(crop, j),
                    "stability_score": float(crop.stability[j]),
                    "crop_box": _xywh(crop.box),
                }
            )
        return records

    def _postprocess_small_regions(
        self, masks: Iterator[np.ndarray], boxes: list[np.ndarray], meta: list, size: tuple[int, int]
    ) -> tuple[Iterator[np.ndarray], list[np.ndarray], list]:
        """The reference's ``postprocess_small_regions``: clean every mask, then NMS preferring
        unchanged masks; cleaned masks that survive get their new box."""
        n = pow2_at_least(len(boxes))
        rows = np.zeros((n, size[0]), bool)
        cols = np.zeros((n, size[1]), bool)
        cleaned, changed = [], []
        for i, mask in enumerate(masks):
            mask, was_changed = clean_mask(mask, self.min_mask_region_area)
            rows[i], cols[i] = mask.any(1), mask.any(0)
            cleaned.append(np.packbits(mask, axis=-1))
            changed.append(was_changed)
        new_boxes = np.asarray(_boxes_from_occupancy(rows, cols))
        keys = np.zeros((1, n), np.float32)
        keys[0, : len(boxes)] = [-float(not c) for c in changed]
        thresh = ops.iou_threshold_f32(max(self.box_nms_thresh, self.crop_nms_thresh))
        keep, order = ranked_nms(new_boxes, keys, np.arange(n) < len(boxes), thresh)
        keep, order = np.asarray(keep), np.asarray(order)
        kept = order[keep[order]]
        out_masks = (np.unpackbits(cleaned[i], axis=-1, count=size[1]).view(bool) for i in kept)
        out_boxes = [new_boxes[i] if changed[i] else boxes[i] for i in kept]
        return out_masks, out_boxes, [meta[i] for i in kept]


def _xywh(box: Sequence[int] | np.ndarray) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]
