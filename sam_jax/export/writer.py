"""``sam-jax export``: write a model's programs (:mod:`sam_jax.export.programs`), weights and
manifest to a directory that :class:`sam_jax.export.runtime.ExportedSam` runs without sam_jax's
model code."""

from __future__ import annotations

import dataclasses
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


def export_model(
    model: nnx.Module,
    out_dir: str | os.PathLike,
    *,
    point_slots: Sequence[int] = POINT_SLOTS,
    multimask: Sequence[bool] = (True, False),
    force: bool = False,
) -> dict:
    """Write ``model`` (either family) as an export directory and return its manifest.

    Files: ``manifest.json``, ``params.npz`` (weight leaves and ``image_pe``), ``encoder_cpu``
    (cpu), ``encoder_accel`` (cuda, tpu) and one decoder program per kind
    (:class:`~sam_jax.export.programs.DecoderKind`: ``multimask``, each of ``point_slots``, with
    and without box / mask inputs, per prompt-count range).
    """
    out = Path(out_dir)
    if (out / mf.MANIFEST).exists() and not force:
        raise ValueError(f"{out} already holds an export; pass force=True (--force) to overwrite it")
    slots = sorted({int(n) for n in point_slots})
    if not slots or slots[0] < 1 or any(n & (n - 1) for n in slots):
        raise ValueError(f"point_slots must be powers of two >= 1, got {list(point_slots)}")
    out.mkdir(parents=True, exist_ok=True)
    facts = programs.model_facts(model)
    _, _, leaves = programs.weight_leaves(model)
    arrays = {mf.param_key(i): leaf for i, leaf in enumerate(leaves)}
    np.savez(out / mf.PARAMS, **arrays, **{mf.IMAGE_PE: programs.image_pe(model)})

    def write(name: str, exported: jax.export.Exported) -> dict:
        (out / mf.artifact_file(name)).write_bytes(exported.serialize())
        return {"name": name, "file": mf.artifact_file(name), "platforms": list(exported.platforms)}

    encoders = [
        write(mf.ENCODER_CPU, programs.export_encoder(model, programs.CPU, ExecutionPolicy.for_platform("cpu"))),
        write(mf.ENCODER_ACCEL, programs.export_encoder(model, programs.ACCELERATORS, ExecutionPolicy())),
    ]
    boxes = (False, True) if facts.family == "sam" else (False,)
    decoders = []
    for mm in multimask:
        for n in slots:
            for box in boxes:
                for mask in (False, True):
                    kind = programs.DecoderKind(bool(mm), n, box, mask)
                    for lo, hi in programs.prompt_ranges(model, kind):
                        k = dataclasses.replace(kind, min_prompts=lo, max_prompts=hi)
                        entry = write(k.name, programs.export_decoder(model, programs.CPU + programs.ACCELERATORS, k))
                        entry.update(
                            multimask_output=k.multimask_output,
                            num_slots=n,
                            box=box,
                            mask_input=mask,
                            min_prompts=lo,
                            max_prompts=hi,
                            inputs=[
                                {"name": a, "shape": s, "dtype": d} for a, s, d in programs.decoder_inputs(facts, k)
                            ],
                        )
                        decoders.append(entry)
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
        "decoder_outputs": [{"name": a, "shape": sh, "dtype": d} for a, sh, d in programs.DECODER_OUTPUTS],
        "symbolic": {
            "B": "images per encoder call",
            "P": "prompts per decoder call",
            "H W": "original image size (the shape of the empty size_like input)",
        },
    }
    (out / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
