"""The exported programs: the image step and the prompt step of :mod:`sam_jax.core` as pure
functions of flat arguments (weight leaves, arrays), lowered by ``jax.export`` for several
platforms at once.

- encoder ``(weights, images (B, S, S, 3), input_sizes (B, 2)) -> features`` (one array per
  feature, leading ``B``), :func:`sam_jax.core.image.embed`, for a symbolic batch ``B``;
- decoder ``(weights, image_pe, features of one image, prompts (P prompts, N point slots)) ->
  low_res_logits, iou_predictions``: :func:`sam_jax.core.decode.decode`. ``P`` and ``N`` are
  static, one program per bucket (:class:`DecoderKind`): with a symbolic prompt count XLA
  compiles the decoder differently and its logits differ from the jitted path's by up to 1.5e-5;
- postprocess ``(low_res_logits (K, m, m), size_like (H, W, 0)) -> masks, mask_logits``: the
  reference's upscaling to the original image (:func:`sam_jax.core.decode.postprocess` with the
  resize built on the device, :mod:`sam_jax.export.resize`). ``K``, ``H`` and ``W`` are symbolic;
  the original size is the shape of the empty ``size_like`` array (an output's size must be an
  input's size in a compiled program), so one program serves every image size, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax import export

from sam_jax.core.decode import _decode_graph, postprocess
from sam_jax.core.image import dense_pe, embed
from sam_jax.core.prompts import Prompts
from sam_jax.core.resize import Resize
from sam_jax.export import manifest as mf
from sam_jax.export.resize import resize_for_size
from sam_jax.ops.policy import XLA, ExecutionPolicy

CPU = ("cpu",)
ACCELERATORS = ("cuda", "tpu")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the programs and the manifest need to know about a model.

    Attributes:
      family: ``"sam"`` or ``"sam2"``.
      img_size: side ``S`` of the square canvas the encoder takes.
      mask_size: side ``m`` of the low-res logits (and of ``mask_input``).
      mask_threshold: logits above it are mask.
      image_dtype: the canvases' dtype (SAM 1: uint8 pixels; SAM 2: float32 in [0, 1]).
      feature_names / feature_shapes: the features pytree of one image, in program order.
      pixel_mean / pixel_std: normalisation applied inside the encoder.
    """

    family: str
    img_size: int
    mask_size: int
    mask_threshold: float
    image_dtype: str
    feature_names: tuple[str, ...]
    feature_shapes: tuple[tuple[int, ...], ...]
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]


def model_facts(model: nnx.Module) -> ModelFacts:
    """:class:`ModelFacts` of a sam_jax model of either family."""
    cfg = model.config
    family = getattr(cfg, "family", "sam")
    img_size = cfg.img_size if family == "sam" else cfg.image_size
    image_dtype = np.uint8 if family == "sam" else np.float32
    graphdef, params = nnx.split(model)
    images = jax.ShapeDtypeStruct((1, img_size, img_size, 3), image_dtype)
    sizes = jax.ShapeDtypeStruct((1, 2), np.int32)
    feats = jax.eval_shape(lambda p, x, s: embed(nnx.merge(graphdef, p), x, s, XLA), params, images, sizes)
    names = tuple(sorted(feats))
    return ModelFacts(
        family=family,
        img_size=img_size,
        mask_size=cfg.prompt_encoder.mask_input_size,
        mask_threshold=float(getattr(cfg, "mask_threshold", 0.0)),
        image_dtype=np.dtype(image_dtype).name,
        feature_names=names,
        feature_shapes=tuple(tuple(feats[k].shape[1:]) for k in names),
        pixel_mean=tuple(float(v) for v in cfg.pixel_mean),
        pixel_std=tuple(float(v) for v in cfg.pixel_std),
    )


def weight_leaves(model: nnx.Module) -> tuple[nnx.GraphDef, Any, list[np.ndarray]]:
    """The model's graph, the tree structure of its weights and their leaves (host arrays)."""
    graphdef, params = nnx.split(model)
    leaves, treedef = jax.tree.flatten(params)
    return graphdef, treedef, [np.asarray(leaf) for leaf in leaves]


def image_pe(model: nnx.Module) -> np.ndarray:
    """The decoder's positional encoding of the embedding grid ``(g, g, D)``, computed by the same
    jitted function the predictors call."""
    graphdef, params = nnx.split(model)
    return np.asarray(dense_pe(graphdef, params))


def _specs(leaves: list[np.ndarray]) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]


def export_encoder(model: nnx.Module, platforms: tuple[str, ...], policy: ExecutionPolicy) -> export.Exported:
    """The encoder for a symbolic batch ``B``: images one at a time with a blocked (CPU) policy (a
    ``lax.map``, as the predictors run one image on a CPU), otherwise vectorised (``vmap``)."""
    facts = model_facts(model)
    graphdef, treedef, leaves = weight_leaves(model)

    def encode(weights, images, input_sizes):
        m = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights))
        one = lambda a: jax.tree.map(lambda x: x[0], embed(m, a[0][None], a[1][None], policy))
        # Model code sees one image of static shape: the blocked (CPU) loops are sized for one image,
        # and the batch stays symbolic outside it (a loop on CPUs, vectorised on accelerators).
        feats = jax.lax.map(one, (images, input_sizes)) if policy.blocked else jax.vmap(one)((images, input_sizes))
        return tuple(feats[k] for k in facts.feature_names)

    (b,) = export.symbolic_shape("B")
    s = facts.img_size
    args = (
        _specs(leaves),
        jax.ShapeDtypeStruct((b, s, s, 3), np.dtype(facts.image_dtype)),
        jax.ShapeDtypeStruct((b, 2), np.int32),
    )
    return export.export(jax.jit(encode), platforms=platforms)(*args)


@functools.lru_cache(maxsize=4)
def _resize_program(mask_size: int, img_size: int | None, platforms: tuple[str, ...]) -> export.Exported:
    """:func:`~sam_jax.export.resize.resize_for_size` as its own program, traced in float64
    (:func:`jax.enable_x64`) and called from the decoder's float32 trace: int32 / float32 in and out."""

    def make(size_like):
        h, w = size_like.shape[:2]
        return tuple(resize_for_size(mask_size, img_size, h, w))

    h, w = export.symbolic_shape("H, W")
    with jax.enable_x64(True):
        return export.export(jax.jit(make), platforms=platforms)(jax.ShapeDtypeStruct((h, w, 0), np.uint8))


@dataclasses.dataclass(frozen=True)
class DecoderKind:
    """One decoder program: its ``multimask_output``, its static prompt count ``num_prompts`` (a
    bucket: the loader pads to it and drops the padding, as the predictors pad to
    :func:`~sam_jax.runtime.sharding.padded_batch_size`), its static point slots ``num_slots``
    (:func:`~sam_jax.core.prompts.point_bucket`), and whether its prompts carry boxes and mask
    inputs. Prompts without a box (or mask) are a different, cheaper program in the jitted path
    too (:func:`sam_jax.core.prompts.drop_absent`), whose rounding differs; all sizes but the
    original image's ``(H, W)`` are static, so XLA compiles what the jitted path compiles and the
    results are the jitted path's bit for bit.

    ``target``: ``"all"`` (cpu, cuda, tpu), or ``"cpu"`` / ``"accel"`` where the platforms'
    execution policies step the prompts differently (:func:`decoder_targets`)."""

    multimask_output: bool
    num_prompts: int
    num_slots: int
    box: bool
    mask: bool
    target: str = "all"

    @property
    def name(self) -> str:
        parts = ["decoder", "multi" if self.multimask_output else "single", f"p{self.num_prompts}"]
        parts += [f"n{self.num_slots}", *["box"] * self.box, *["mask"] * self.mask]
        return "_".join(parts + ([] if self.target == "all" else [self.target]))


# Platforms and execution policy of each decoder target.
CPU_POLICY = ExecutionPolicy.for_platform("cpu")
ACCEL_POLICY = ExecutionPolicy()
TARGETS = {"all": (CPU + ACCELERATORS, ACCEL_POLICY), "cpu": (CPU, CPU_POLICY), "accel": (ACCELERATORS, ACCEL_POLICY)}


def decoder_targets(num_prompts: int) -> tuple[str, ...]:
    """Targets exported for ``num_prompts``: one program for every platform where the CPU policy
    decodes the prompts in one step as the accelerators' does (:meth:`ExecutionPolicy.prompt_chunk`),
    else one per policy (the CPU's steps ``prompts_per_device`` prompts at a time, as the
    predictors on a CPU do)."""
    if CPU_POLICY.prompt_chunk(num_prompts) == ACCEL_POLICY.prompt_chunk(num_prompts):
        return ("all",)
    return ("cpu", "accel")


def decoder_inputs(facts: ModelFacts, kind: DecoderKind) -> list[tuple[str, str, str]]:
    """``(name, shape, dtype)`` of the decoder's array inputs after the weights and ``image_pe``,
    in order; all static."""
    m, n, p = facts.mask_size, kind.num_slots, kind.num_prompts
    out = [
        (name, " ".join(map(str, shape)), "float32")
        for name, shape in zip(facts.feature_names, facts.feature_shapes, strict=True)
    ]
    out += [
        ("point_coords", f"{p} {n} 2", "float32"),
        ("point_labels", f"{p} {n}", "int32"),
        ("point_valid", f"{p} {n}", "bool"),
    ]
    if kind.box:
        out += [("boxes", f"{p} 4", "float32"), ("box_valid", f"{p}", "bool")]
    if kind.mask:
        out += [("mask_input", f"{p} {m} {m}", "float32"), ("mask_valid", f"{p}", "bool")]
    return out


DECODER_OUTPUTS = (
    ("low_res_logits", "P C m m", "float32"),
    ("iou_predictions", "P C", "float32"),
)
POSTPROCESS_INPUTS = (("low_res_logits", "K m m", "float32"), ("size_like", "H W 0", "uint8"))
POSTPROCESS_OUTPUTS = (("masks", "K H W", "bool"), ("mask_logits", "K H W", "float32"))


def export_decoder(model: nnx.Module, kind: DecoderKind) -> export.Exported:
    """The prompt step of one image for ``kind``'s static prompts: low-res logits ``(P, C, m, m)``
    (``C`` is 3 with ``multimask_output``, else 1) and IoU predictions ``(P, C)``, as
    :func:`sam_jax.core.decode.decode` gives them. Lowered for ``kind.target``'s platforms with
    its policy."""
    facts = model_facts(model)
    if kind.box and facts.family != "sam":
        raise ValueError("SAM 2 takes boxes as two points (labels 2 and 3): its decoders have no box input")
    platforms, policy = TARGETS[kind.target]
    graphdef, treedef, leaves = weight_leaves(model)
    names = [name for name, _, _ in decoder_inputs(facts, kind)]

    def decode(weights, pe, *arrays):
        a = dict(zip(names, arrays, strict=True))
        feats = {k: a[k] for k in facts.feature_names}
        prompts = Prompts(*(a.get(f) for f in mf.PROMPT_FIELDS))
        params = jax.tree.unflatten(treedef, weights)
        return _decode_graph(graphdef, params, feats, prompts, kind.multimask_output, pe, policy)

    specs = [
        jax.ShapeDtypeStruct(tuple(int(d) for d in shape.split()), np.dtype(dtype))
        for _, shape, dtype in decoder_inputs(facts, kind)
    ]
    pe_spec = jax.ShapeDtypeStruct(image_pe(model).shape, np.float32)
    return export.export(jax.jit(decode), platforms=platforms)(_specs(leaves), pe_spec, *specs)


def export_postprocess(facts: ModelFacts) -> export.Exported:
    """The reference's mask postprocessing (:func:`sam_jax.core.decode.postprocess`, with the
    resize built on the device by :mod:`sam_jax.export.resize`): ``K`` low-res logits to masks
    and logits at an original image size ``(H, W)``, all three symbolic. A separate program, as
    in the predictors: a new image size compiles only this (fractions of a second), not the
    decoder; the masks are resized one at a time, so a symbolic ``K`` changes no rounding."""
    platforms = CPU + ACCELERATORS
    resize_prog = _resize_program(facts.mask_size, facts.img_size if facts.family == "sam" else None, platforms)
    threshold = np.float32(facts.mask_threshold)

    def post(low_res, size_like):
        logits = postprocess(low_res, Resize(*resize_prog.call(size_like)), threshold, True)
        return logits > threshold, logits

    k, h, w = export.symbolic_shape("K, H, W", constraints=["K >= 1"])
    m = facts.mask_size
    args = (jax.ShapeDtypeStruct((k, m, m), np.float32), jax.ShapeDtypeStruct((h, w, 0), np.uint8))
    return export.export(jax.jit(post), platforms=platforms)(*args)
