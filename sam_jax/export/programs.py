"""The exported programs: the image step and the prompt step of :mod:`sam_jax.core` as pure
functions of flat arguments (weight leaves, arrays), traced with symbolic sizes and lowered by
``jax.export`` for several platforms at once.

- encoder ``(weights, images (B, S, S, 3), input_sizes (B, 2)) -> features`` (one array per
  feature, leading ``B``), :func:`sam_jax.core.image.embed`;
- decoder ``(weights, image_pe, features of one image, prompts (P prompts, N point slots),
  size_like (H, W, 0)) -> masks, mask_logits, iou_predictions, low_res_logits``:
  :func:`sam_jax.core.decode.decode` then the reference's postprocessing to ``(H, W)``
  (:func:`sam_jax.core.decode.postprocess` with the resize built on the device,
  :mod:`sam_jax.export.resize`). The original size is the shape of the empty ``size_like``
  array: an output's size must be an input's size in a compiled program, and so the one program
  serves every image size.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export

from sam_jax.core.decode import _decode_graph, postprocess
from sam_jax.core.image import dense_pe, embed
from sam_jax.core.prompts import Prompts
from sam_jax.core.resize import Resize
from sam_jax.export.resize import resize_for_size
from sam_jax.ops.policy import XLA, ExecutionPolicy

# SAM2ImagePredictor clamps the low-res logits it returns (sam_jax.predictors.sam2.LOW_RES_CLAMP).
SAM2_LOW_RES_CLAMP = 32.0
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
    """Which decoder program: its ``multimask_output``, its static point slots, and whether its
    prompts carry boxes and mask inputs. Prompts without a box (or mask) are a different, cheaper
    program in the jitted path too (:func:`sam_jax.core.prompts.drop_absent`), whose rounding
    differs; one program per kind keeps the exported results the jitted path's exactly."""

    multimask_output: bool
    num_slots: int
    box: bool
    mask: bool
    min_prompts: int = 1
    max_prompts: int | None = None

    @property
    def name(self) -> str:
        parts = ["decoder", "multi" if self.multimask_output else "single", f"n{self.num_slots}"]
        parts += ["box"] * self.box + ["mask"] * self.mask
        return "_".join([*parts, f"p{self.min_prompts}-{self.max_prompts or 'inf'}"])


def decoder_inputs(facts: ModelFacts, kind: DecoderKind) -> list[tuple[str, str, str]]:
    """``(name, shape, dtype)`` of the decoder's array inputs after the weights and ``image_pe``,
    in order; shapes name the symbolic sizes ``P`` (prompts), ``H`` and ``W`` (the original image)."""
    m, n = facts.mask_size, kind.num_slots
    out = [
        (name, " ".join(map(str, shape)), "float32")
        for name, shape in zip(facts.feature_names, facts.feature_shapes, strict=True)
    ]
    out += [
        ("point_coords", f"P {n} 2", "float32"),
        ("point_labels", f"P {n}", "int32"),
        ("point_valid", f"P {n}", "bool"),
    ]
    if kind.box:
        out += [("boxes", "P 4", "float32"), ("box_valid", "P", "bool")]
    if kind.mask:
        out += [("mask_input", f"P {m} {m}", "float32"), ("mask_valid", "P", "bool")]
    return [*out, ("size_like", "H W 0", "uint8")]


DECODER_OUTPUTS = (
    ("masks", "P C H W", "bool"),
    ("mask_logits", "P C H W", "float32"),
    ("iou_predictions", "P C", "float32"),
    ("low_res_logits", "P C m m", "float32"),
)


def export_decoder(model: nnx.Module, platforms: tuple[str, ...], kind: DecoderKind) -> export.Exported:
    """The prompt step of one image for symbolic ``P`` prompts and an original image of symbolic
    ``(H, W)``, with the reference's postprocessing (module docstring); ``C`` is 3 with
    ``multimask_output``, else 1.

    The point slots are static: the decoder's cross attentions choose their evaluation order from
    the token count (:func:`sam_jax.ops.cross_attention.factored_is_cheaper`, a Python decision on
    shapes), which a symbolic count leaves undecided. One program per slot bucket (the predictors'
    :func:`~sam_jax.core.prompts.point_bucket`) makes the jitted path's choice."""
    if kind.box and model_facts(model).family != "sam":
        raise ValueError("SAM 2 takes boxes as two points (labels 2 and 3): its decoders have no box input")
    facts = model_facts(model)
    graphdef, treedef, leaves = weight_leaves(model)
    resize_prog = _resize_program(facts.mask_size, facts.img_size if facts.family == "sam" else None, platforms)
    threshold = np.float32(facts.mask_threshold)
    names = [name for name, _, _ in decoder_inputs(facts, kind)]

    def decode(weights, pe, *arrays):
        a = dict(zip(names, arrays, strict=True))
        feats = {k: a[k] for k in facts.feature_names}
        prompts = Prompts(
            a["point_coords"],
            a["point_labels"],
            a["point_valid"],
            a.get("boxes"),
            a.get("box_valid"),
            a.get("mask_input"),
            a.get("mask_valid"),
        )
        params = jax.tree.unflatten(treedef, weights)
        low_res, iou = _decode_graph(graphdef, params, feats, prompts, kind.multimask_output, pe, XLA)
        logits = postprocess(low_res, Resize(*resize_prog.call(a["size_like"])), threshold, True)
        if facts.family == "sam2":
            low_res = jnp.clip(low_res, -SAM2_LOW_RES_CLAMP, SAM2_LOW_RES_CLAMP)
        return logits > threshold, logits, iou, low_res

    constraints = [f"P >= {kind.min_prompts}"]
    if kind.max_prompts is not None:
        constraints.append(f"P <= {kind.max_prompts}")
    p, h, w = export.symbolic_shape("P, H, W", constraints=constraints)
    dims = {"P": p, "H": h, "W": w}
    specs = [
        jax.ShapeDtypeStruct(tuple(dims[d] if d in dims else int(d) for d in shape.split()), np.dtype(dtype))
        for _, shape, dtype in decoder_inputs(facts, kind)
    ]
    pe_spec = jax.ShapeDtypeStruct(image_pe(model).shape, np.float32)
    return export.export(jax.jit(decode), platforms=platforms)(_specs(leaves), pe_spec, *specs)


# Prompt counts up to which the evaluation-order thresholds are searched (beyond: one range).
MAX_THRESHOLD_SEARCH = 4096


def prompt_ranges(model: nnx.Module, kind: DecoderKind) -> list[tuple[int, int | None]]:
    """Ranges ``[lo, hi]`` of the prompt count ``P`` over which the decoder's programs are the same
    (``hi`` None: unbounded); one program is exported per range, constrained to it.

    Where the image side is shared by all prompts (no mask inputs), the cross attentions' choice
    of evaluation order (:func:`~sam_jax.ops.cross_attention.factored_is_cheaper`) depends on
    ``P``. The calls made for ``P = 2`` are recorded while tracing (shapes only) and the same
    function is evaluated for every ``P`` up to :data:`MAX_THRESHOLD_SEARCH` to find where it flips.
    """
    from sam_jax.ops import cross_attention

    facts = model_facts(model)
    graphdef, params = nnx.split(model)
    calls = []
    original = cross_attention.factored_is_cheaper

    def record(attn, n_image, n_tokens, image_batch, batch):
        calls.append((attn, n_image, n_tokens, image_batch == 1 and batch != 1))
        return original(attn, n_image, n_tokens, image_batch, batch)

    spec = {name: shape for name, shape, _ in decoder_inputs(facts, kind)}
    dtypes = {name: dtype for name, _, dtype in decoder_inputs(facts, kind)}
    probe = {
        k: jax.ShapeDtypeStruct(tuple(2 if d == "P" else int(d) for d in spec[k].split()), np.dtype(dtypes[k]))
        for k in spec
        if k != "size_like"
    }

    def decode(params, pe, a):
        feats = {k: a[k] for k in facts.feature_names}
        fields = ("point_coords", "point_labels", "point_valid", "boxes", "box_valid", "mask_input", "mask_valid")
        prompts = Prompts(*(a.get(f) for f in fields))
        return _decode_graph(graphdef, params, feats, prompts, kind.multimask_output, pe, XLA)

    cross_attention.factored_is_cheaper = record
    try:
        jax.eval_shape(decode, params, jax.ShapeDtypeStruct(image_pe(model).shape, np.float32), probe)
    finally:
        cross_attention.factored_is_cheaper = original
    flips = set()
    for attn, n_image, n_tokens, shared in calls:
        if not shared:
            continue
        choice = [original(attn, n_image, n_tokens, 1, b) for b in range(1, MAX_THRESHOLD_SEARCH + 1)]
        flips |= {b + 1 for b in range(1, MAX_THRESHOLD_SEARCH) if choice[b] != choice[b - 1]}
    bounds = [1, *sorted(flips)]
    return [(lo, hi - 1) for lo, hi in itertools.pairwise(bounds)] + [(bounds[-1], None)]
