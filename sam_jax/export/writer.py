"""``sam-jax export``: write a model's programs (:mod:`sam_jax.export.programs`), weights and
manifest to a directory that :class:`sam_jax.export.runtime.ExportedSam` runs without sam_jax's
model code."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sam_jax.export import manifest as mf
from sam_jax.export import programs
from sam_jax.ops.policy import ExecutionPolicy

# Point-slot buckets exported by default: up to 15 clicks (plus the reference's padding point).
POINT_SLOTS = (1, 2, 4, 8, 16)
# Largest prompt bucket exported by default (every power of two up to it is exported).
MAX_PROMPTS = 16


def prompt_buckets(max_prompts: int) -> list[int]:
    """Prompt counts exported: every power of two up to ``max_prompts``. The predictors pad ``P``
    prompts to the next power of two (:func:`~sam_jax.runtime.sharding.padded_batch_size`) and
    their results depend on that bucket (by up to 1.5e-5 between ``P`` = 2 and 4), so the loader
    needs each one to give their results exactly."""
    if max_prompts < 1 or max_prompts & (max_prompts - 1):
        raise ValueError(f"max_prompts must be a power of two >= 1, got {max_prompts}")
    return [1 << i for i in range(max_prompts.bit_length())]


def decoder_kinds(
    family: str, point_slots: Sequence[int], max_prompts: int, multimask: Sequence[bool]
) -> list[programs.DecoderKind]:
    """Every decoder program of an export: per ``multimask_output``, point-slot bucket, prompt
    bucket (:func:`prompt_buckets`), box and mask input (SAM 1; SAM 2 takes boxes as points), and
    target (:func:`~sam_jax.export.programs.decoder_targets`). Buckets a CPU steps through in
    chunks of :data:`~sam_jax.export.programs.CPU_POLICY` ``.prompts_per_device`` prompts get no
    CPU program: the loader runs the chunk's program once per chunk, which is what the jitted
    path's ``lax.map`` computes (``tests/test_export.py``)."""
    slots = sorted({int(n) for n in point_slots})
    if not slots or slots[0] < 1 or any(n & (n - 1) for n in slots):
        raise ValueError(f"point_slots must be powers of two >= 1, got {list(point_slots)}")
    boxes = (False, True) if family == "sam" else (False,)
    buckets = prompt_buckets(max_prompts)
    return [
        programs.DecoderKind(bool(mm), p, n, box, mask, target)
        for mm, n, p, box, mask in itertools.product(multimask, slots, buckets, boxes, (False, True))
        for target in programs.decoder_targets(p)
        # A CPU runs a bucket it steps through in chunks as those chunks (docstring).
        if not (target == "cpu" and programs.CPU_POLICY.prompt_chunk(p) in buckets)
    ]


def export_model(
    model: nnx.Module,
    out_dir: str | os.PathLike,
    *,
    point_slots: Sequence[int] = POINT_SLOTS,
    max_prompts: int = MAX_PROMPTS,
    multimask: Sequence[bool] = (True, False),
    force: bool = False,
) -> dict:
    """Write ``model`` (either family) as an export directory and return its manifest.

    Files: ``manifest.json``, ``params.npz`` (weight leaves and ``image_pe``), ``encoder_cpu``
    (cpu), ``encoder_accel`` (cuda, tpu), the decoder programs of :func:`decoder_kinds` and
    ``postprocess``.
    """
    out = Path(out_dir)
    if (out / mf.MANIFEST).exists() and not force:
        raise ValueError(f"{out} already holds an export; pass force=True (--force) to overwrite it")
    kinds = decoder_kinds(getattr(model.config, "family", "sam"), point_slots, max_prompts, multimask)
    facts = programs.model_facts(model)
    chunk = programs.CPU_POLICY.prompts_per_device
    out.mkdir(parents=True, exist_ok=True)
    _, _, leaves = programs.weight_leaves(model)
    arrays = {mf.param_key(i): leaf for i, leaf in enumerate(leaves)}
    np.savez(out / mf.PARAMS, **arrays, **{mf.IMAGE_PE: programs.image_pe(model)})

    def write(name: str, exported: jax.export.Exported) -> dict:
        (out / mf.artifact_file(name)).write_bytes(exported.serialize())
        return {"name": name, "file": mf.artifact_file(name), "platforms": list(exported.platforms)}

    encoders = [
        write(mf.ENCODER_CPU, programs.export_encoder(model, programs.CPU, programs.CPU_POLICY)),
        write(mf.ENCODER_ACCEL, programs.export_encoder(model, programs.ACCELERATORS, ExecutionPolicy())),
    ]
    decoders = []
    for k in kinds:
        entry = write(k.name, programs.export_decoder(model, k))
        entry.update(
            multimask_output=k.multimask_output,
            num_prompts=k.num_prompts,
            num_slots=k.num_slots,
            box=k.box,
            mask_input=k.mask,
            inputs=[{"name": a, "shape": s, "dtype": d} for a, s, d in programs.decoder_inputs(facts, k)],
        )
        decoders.append(entry)
    post = write(mf.POSTPROCESS, programs.export_postprocess(facts))
    s = facts.img_size
    manifest = {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "jax_version": jax.__version__,
        "family": facts.family,
        "config": model.config.to_dict(),
        "img_size": s,
        "mask_size": facts.mask_size,
        "mask_threshold": facts.mask_threshold,
        "preprocessing": {
            "image": (
                "resize the long side to img_size (Pillow bilinear, int(x + 0.5) rounding), top-left on a "
                "zero img_size x img_size uint8 canvas; input_sizes = resized (h, w)"
                if facts.family == "sam"
                else "RGB / 255 as float32, resized to img_size x img_size (bilinear, antialiased as "
                "torchvision); input_sizes = (img_size, img_size)"
            ),
            "pixel_mean": list(facts.pixel_mean),
            "pixel_std": list(facts.pixel_std),
            "normalisation": "inside the encoder",
            "outputs": (
                "masks and mask_logits: postprocess of the decoder's low_res_logits[:P], reshaped to (P * C, m, m)"
                + ("" if facts.family == "sam" else "; low_res_logits returned clamped to [-32, 32]")
            ),
            "points": (
                "xy * (resized w / W, resized h / H); prompts with points and no box get a padding point "
                "(label -1 at 0, 0); unused slots point_valid False"
                if facts.family == "sam"
                else "xy / (W, H) * img_size; a box is two points labelled 2, 3 ahead of the clicks, then the "
                "padding point (label -1); unused slots point_valid False"
            ),
        },
        "params": {"file": mf.PARAMS, "count": len(leaves), "image_pe": mf.IMAGE_PE},
        "encoders": [
            {
                **e,
                "inputs": [
                    {"name": "weights", "shape": "params.npz p00000..", "dtype": "mixed"},
                    {"name": "images", "shape": f"B {s} {s} 3", "dtype": facts.image_dtype},
                    {"name": "input_sizes", "shape": "B 2", "dtype": "int32"},
                ],
                "outputs": [
                    {"name": k, "shape": "B " + " ".join(map(str, sh)), "dtype": "float32"}
                    for k, sh in zip(facts.feature_names, facts.feature_shapes, strict=True)
                ],
            }
            for e in encoders
        ],
        "decoders": decoders,
        # Prompt buckets above it run on a CPU as chunks of this many prompts, through the
        # chunk's program (the predictors' lax.map over the same chunks).
        "cpu_prompt_chunk": chunk,
        "decoder_outputs": [{"name": a, "shape": sh, "dtype": d} for a, sh, d in programs.DECODER_OUTPUTS],
        "decoder_dims": {"P": "num_prompts of the program", "C": "3 with multimask_output, else 1", "m": "mask_size"},
        "postprocess": {
            **post,
            "inputs": [
                {"name": a, "shape": sh.replace("m", str(facts.mask_size)), "dtype": d}
                for a, sh, d in programs.POSTPROCESS_INPUTS
            ],
            "outputs": [{"name": a, "shape": sh, "dtype": d} for a, sh, d in programs.POSTPROCESS_OUTPUTS],
        },
        "symbolic": {  # every other size is static: one decoder program per bucket
            "B": "images per encoder call",
            "K": "low-res masks per postprocess call",
            "H W": "original image size (the shape of the empty size_like input)",
        },
    }
    (out / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
