"""Peak memory of automatic mask generation on a large photo: sam_jax against the reference.

    python benchmarks/amg_memory.py [--model vit_b] [--size 3000x4000] [--settings 4:64:few,8:16:few,8:16:many]

Both sides hold the parity fixtures' random weights and see the same photo (``skimage.data.coffee``
resized to ``--size``, H x W), with the same generator settings. Each measurement runs in its own
subprocess, so the peak resident set size (``VmHWM``, reset before the call; see
:func:`harness.peak_rss`) is that side's own. The peak of the first ``generate`` call is reported
(for sam_jax it includes compiling the programs for this image size) and of a second call.

What dominates: the reference upsamples the logits of a whole point batch (``3 x points_per_batch``
masks) to full resolution in float32 (``4 H W`` bytes each), then thresholds and scores them, so
its peak grows with ``points_per_batch x H x W``. sam_jax upsamples one mask at a time and keeps
per-mask statistics, renders only the masks that survive NMS (bit-packed), and unpacks them one
at a time on the host, so its peak is the model, one canvas, and the output itself. (The default
settings keep the reference's batches at 16 points, 48 masks: at 3000 x 4000 its upsampled logits
alone take 2.3 GB per batch, 9.2 GB at the default 64 points per batch; run ``--sides ours`` for
larger settings on a machine without that memory to spare.)

The random weights give degenerate masks; as in ``tests/test_amg_parity.py`` the mask threshold is
raised to 1.5 on both models and the quality filters are relaxed so that masks survive and the
whole pipeline (scoring, NMS, rendering, RLE) runs: ``few`` keeps the parity test's filters (a mask
or two survive), ``many`` turns the stability filter off and NMS nearly off, so that about 2 masks
per point are rendered at full size. Output mode ``coco_rle``, so the table measures the pipeline,
not a list of full-size boolean masks (which both sides would hold alike).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import harness

MB = 2**20
MASK_THRESHOLD = 1.5
GENERATOR = dict(pred_iou_thresh=0.0, stability_score_thresh=0.05, stability_score_offset=0.2, output_mode="coco_rle")
FILTERS = {"few": {}, "many": dict(stability_score_thresh=0.0, box_nms_thresh=0.95)}


def big_photo(size: tuple[int, int]):
    """``skimage.data.coffee`` resized (bilinear, PIL) to ``size`` = (H, W)."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(harness.photo("coffee")).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image)


def worker(side: str, model: str, size: tuple[int, int], pps: int, ppb: int, filters: str) -> dict:
    """Load ``side``'s model, run ``generate`` twice and return timings and peak RSS (bytes)."""
    image = big_photo(size)
    kwargs = dict(GENERATOR, **FILTERS[filters], points_per_side=pps, points_per_batch=ppb)
    if side == "reference":
        import torch
        from segment_anything import SamAutomaticMaskGenerator

        from reference_model import build_reference

        torch.set_num_threads(harness.usable_cores())
        sam = build_reference(model)
        sam.mask_threshold = MASK_THRESHOLD
        generator = SamAutomaticMaskGenerator(sam, **kwargs)
        context = torch.no_grad
    else:
        import contextlib
        import dataclasses

        from sam_jax import build_sam, get_config
        from sam_jax.amg import SamAutomaticMaskGenerator
        from sam_jax.convert import rules

        cfg = dataclasses.replace(get_config(model), mask_threshold=MASK_THRESHOLD)
        generator = SamAutomaticMaskGenerator(
            build_sam(cfg, params=rules.to_params(harness.fixture_state_dict(model), cfg)), **kwargs
        )
        context = contextlib.nullcontext
    out: dict = {"side": side, "rss_before": harness.rss_bytes()}
    for call in ("first", "second"):
        with context(), harness.peak_rss(out, f"peak_{call}"):
            t0 = time.perf_counter()
            records = generator.generate(image)
            out[f"seconds_{call}"] = time.perf_counter() - t0
        out["masks"] = len(records)
        del records
    out["process_peak"] = harness.process_peak_rss_bytes()
    return out


def run(side: str, args: argparse.Namespace, setting: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model", args.model, "--size", args.size]
    cmd += ["--settings", setting, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        # A killed worker (out of memory) is a result too: report it rather than stop.
        return {"side": side, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--size", default="3000x4000", help="H x W of the photo")
    parser.add_argument(
        "--settings",
        default="4:64:few,8:16:few,8:16:many",
        help="points_per_side:points_per_batch:filters (few or many), comma-separated",
    )
    parser.add_argument("--sides", default="ours,reference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    settings = [s.split(":") for s in args.settings.split(",")]
    if args.worker:
        ((pps, ppb, filters),) = settings
        print(json.dumps(worker(args.worker, args.model, size, int(pps), int(ppb), filters)))
        return

    settings_text = ", ".join(f"{k}={v}" for k, v in GENERATOR.items())
    print(f"# {args.model}, photo {size[0]}x{size[1]} (H x W), {args.threads} threads; ", end="")
    print(f"mask threshold {MASK_THRESHOLD}, {settings_text}; filters {FILTERS}")
    print(
        "| image | points_per_side | points_per_batch | filters | side | masks | RSS before (MiB) "
        "| peak, 1st call (MiB) | peak, 2nd call (MiB) | 2nd call (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for pps, ppb, filters in settings:
        label = f"| {size[0]}x{size[1]} | {pps} | {ppb} | {filters} |"
        results = {side: run(side, args, f"{pps}:{ppb}:{filters}") for side in args.sides.split(",")}
        for side, r in results.items():
            if "error" in r:
                print(f"{label} {side} | {r['error']} | | | | |")
                continue
            print(
                f"{label} {side} | {r['masks']} | {r['rss_before'] / MB:.0f} | {r['peak_first'] / MB:.0f} "
                f"| {r['peak_second'] / MB:.0f} | {r['seconds_second']:.1f} |"
            )
        rows.append((label, results))
    print()
    print("| image | points_per_side | points_per_batch | filters | peak ours / reference, 1st call | 2nd call |")
    print("|---|---|---|---|---|---|")
    for label, results in rows:
        ours, ref = results.get("ours", {}), results.get("reference", {})
        if "peak_first" in ours and "peak_first" in ref:
            first, second = ours["peak_first"] / ref["peak_first"], ours["peak_second"] / ref["peak_second"]
            print(f"{label} {first:.2f} | {second:.2f} |")


if __name__ == "__main__":
    main()
