"""SAM 2 video: host memory against the video's length, sam_jax's streaming API against the reference.

    python benchmarks/video_memory.py [--model sam2_test] [--frames 200,2000] [--ref-frames 100,200]
                                      [--objects 3] [--threads 2] [--results benchmarks/VIDEO_MEMORY.md]

A synthetic stream (moving discs on a textured background, 240 x 320, made frame by frame: nothing
is kept by the generator) with ``--objects`` objects clicked on frame 0. Each side runs in its own
subprocess and records its peak resident set size (``getrusage``: the high-water mark since the
process started, so it includes building the model and compiling) and current RSS after the given
numbers of frames:

- ``ours``: ``SAM2VideoPredictor.track_stream`` over the generator (length unknown to it), which keeps
  only each object's memory bank; also the bytes of the arrays its state holds (read from the
  generator's frame between two frames). Bar (issue 14): peak RSS after the last count <= 1.1 x
  after the first.
- ``reference``: sam2 1.1.0's ``SAM2VideoPredictor`` as its users run it: the frames written as a
  JPEG folder, ``init_state`` (which loads every frame as a float32 tensor), ``add_new_points_or_box``,
  ``propagate_in_video``; it keeps every frame's outputs for every object.

Both hold the same random weights (the reference's modules, every tensor redrawn as in
``tests/test_sam2_video_predictor_live.py``, converted for sam_jax). ``sam2_test`` (128 px) by
default: what is measured is the growth, and 2,000 frames of hiera_t at 1024 px would take hours
on a 2-core CPU; the Markdown scales the per-frame figures to sam2.1_hiera_tiny at 1024 px from the
configs' array sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent
MB = 2**20
SIZE = (240, 320)  # H, W of the synthetic frames


def disc_centres(t: int, k: int) -> list[tuple[float, float]]:
    """Where the ``k`` discs are on frame ``t`` (xy): each bounces on its own path."""
    import numpy as np

    h, w = SIZE
    out = []
    for i in range(k):
        phase = 0.37 * i + 0.05 * t * (1 + 0.3 * i)
        x = w * (0.2 + 0.6 * (0.5 + 0.5 * np.sin(phase + i)))
        y = h * (0.2 + 0.6 * (0.5 + 0.5 * np.cos(0.7 * phase + 2 * i)))
        out.append((float(x), float(y)))
    return out


def synthetic_frame(t: int, k: int):
    """Frame ``t``: a fixed texture drifting left, ``k`` coloured discs of radius 24."""
    import numpy as np

    h, w = SIZE
    rng = np.random.default_rng(0)
    texture = rng.integers(30, 100, (h // 8 + 1, w // 8 + 2, 3)).repeat(8, 0).repeat(8, 1)
    shift = t % 8
    img = texture[:h, shift : shift + w].astype(np.uint8).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    colours = [(220, 60, 50), (40, 80, 230), (60, 200, 70), (230, 200, 40), (200, 60, 200)]
    for i, (cx, cy) in enumerate(disc_centres(t, k)):
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 24**2] = colours[i % len(colours)]
    return img


def _prompts(k: int) -> list[tuple]:
    import numpy as np

    return [
        (i + 1, np.array([xy], np.float32), np.array([1], np.int32), None) for i, xy in enumerate(disc_centres(0, k))
    ]


def _array_bytes(tree, seen: set) -> int:
    """Bytes of the distinct arrays (NumPy, or torch tensors by storage) in nested dicts / lists."""
    if isinstance(tree, dict):
        return sum(_array_bytes(v, seen) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_array_bytes(v, seen) for v in tree)
    if not hasattr(tree, "nbytes"):
        return 0
    key = tree.untyped_storage().data_ptr() if hasattr(tree, "untyped_storage") else id(tree)
    if key in seen:
        return 0
    seen.add(key)
    return int(tree.untyped_storage().nbytes()) if hasattr(tree, "untyped_storage") else int(tree.nbytes)


def _mark(counts: list[int], t: int, t0: float, extra: dict | None = None) -> dict | None:
    if t + 1 not in counts:
        return None
    return {
        "frames": t + 1,
        "peak_rss": harness.process_peak_rss_bytes(),
        "rss": harness.rss_bytes(),
        "seconds": time.perf_counter() - t0,
        **(extra or {}),
    }


def worker(side: str, model: str, counts: list[int], k: int) -> dict:
    import jax
    import numpy as np
    import torch
    from test_sam2_video_predictor_live import build_reference, ours_from

    from sam_jax.models.sam2.config import get_config
    from sam_jax.predictors.sam2_video import stream_bytes_per_object

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(harness.usable_cores())
    cfg = get_config(model)
    ref = build_reference(cfg, seed=11, score_shift=0.1)
    marks: list[dict] = []
    n = max(counts)
    if side == "ours":
        ours = ours_from(ref, cfg)
        del ref
        base = harness.rss_bytes()
        stream = ours.track_stream((synthetic_frame(t, k) for t in range(n)), {0: _prompts(k)})
        t0 = time.perf_counter()
        for t, ids, masks in stream:
            state = stream.gi_frame.f_locals["state"]
            held = _array_bytes(state["output_dict_per_obj"], {id(state["constants"]["maskmem_pos_enc"])})
            fg = [float(np.mean(m > 0)) for m in masks]
            mark = _mark(counts, t, t0, {"state_array_bytes": held, "objects": len(ids), "foreground": fg})
            if mark:
                marks.append(mark)
        return {"side": side, "rss_after_build": base, "marks": marks, "cap_per_object": stream_bytes_per_object(cfg)}

    import sam2.utils.misc
    from PIL import Image
    from sam2_components import scipy_connected_components

    sam2.utils.misc.get_connected_components = scipy_connected_components  # its CUDA op, on CPU
    with tempfile.TemporaryDirectory() as folder:
        for t in range(n):
            Image.fromarray(synthetic_frame(t, k)).save(os.path.join(folder, f"{t:05d}.jpg"), quality=95)
        base = harness.rss_bytes()
        with torch.inference_mode():
            state = ref.init_state(folder)
            after_init = harness.rss_bytes()
            for obj_id, pts, labels, _ in _prompts(k):
                ref.add_new_points_or_box(state, 0, obj_id, points=pts, labels=labels)
            t0 = time.perf_counter()
            for t, ids, _ in ref.propagate_in_video(state):
                if t + 1 not in counts:
                    continue
                kept = {k: v for k, v in state.items() if k not in ("images", "cached_features")}
                mark = _mark(counts, t, t0, {"state_array_bytes": _array_bytes(kept, set()), "objects": len(ids)})
                if mark:
                    marks.append(mark)
    return {"side": side, "rss_after_build": base, "rss_after_init_state": after_init, "marks": marks}


def run(side: str, args: argparse.Namespace, counts: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model", args.model, "--threads", str(args.threads)]
    cmd += ["--frames", counts, "--objects", str(args.objects)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        return {"side": side, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_per_frame_bytes(cfg) -> int:
    """What one tracked frame adds for one object to the reference's state: memory features
    (bfloat16), the low-res mask (float32), the object pointer and score (float32)."""
    g, m = cfg.image_size // cfg.backbone_stride, cfg.prompt_encoder.mask_input_size
    return g * g * cfg.mem_dim * 2 + m * m * 4 + (cfg.hidden_dim + 1) * 4


def hiera_t_per_frame_bytes() -> dict[str, int]:
    """:func:`reference_per_frame_bytes` at sam2.1_hiera_tiny 1024 px, what the reference's
    init_state holds per frame (the frame as float32), and our per-object cap."""
    from sam_jax.models.sam2.config import get_config
    from sam_jax.predictors.sam2_video import stream_bytes_per_object

    cfg = get_config("sam2.1_hiera_tiny")
    return {
        "output_per_frame_object": reference_per_frame_bytes(cfg),
        "image_per_frame": 3 * cfg.image_size**2 * 4,
        "our_cap_per_object": stream_bytes_per_object(cfg),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2_test")
    parser.add_argument("--frames", default="200,2000", help="frame counts at which ours is measured")
    parser.add_argument("--ref-frames", default="100,200", help="frame counts at which the reference is measured")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", default="ours,reference")
    parser.add_argument("--results", type=Path, default=HERE / "VIDEO_MEMORY.md")
    parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    if args.worker:
        counts = sorted(int(v) for v in args.frames.split(","))
        print(json.dumps(worker(args.worker, args.model, counts, args.objects)))
        return

    load = os.getloadavg()
    results = {}
    for side in args.sides.split(","):
        counts = args.frames if side == "ours" else args.ref_frames
        t0 = time.perf_counter()
        results[side] = run(side, args, counts)
        results[side]["wall"] = time.perf_counter() - t0
        print(side, json.dumps(results[side])[:2000], flush=True)
    load_after = os.getloadavg()
    write_markdown(args, results, load, load_after)


def write_markdown(args: argparse.Namespace, results: dict, load: tuple, load_after: tuple) -> None:
    """``args.results`` from the workers' ``results`` (and the load averages around the run)."""
    from sam_jax.models.sam2.config import get_config

    lines = [
        "# SAM 2 video: host memory against the video's length",
        "",
        f"`python benchmarks/video_memory.py --model {args.model} --frames {args.frames} --ref-frames "
        f"{args.ref_frames} --objects {args.objects} --threads {args.threads}` ({datetime.date.today()}; "
        f"{harness.machine()['cpu']}; load average {load[0]:.2f} before, {load_after[0]:.2f} after; other jobs "
        "were running on the machine).",
        "",
        f"A synthetic {SIZE[0]} x {SIZE[1]} stream, {args.objects} objects clicked on frame 0, random weights "
        f"(same on both sides), config `{args.model}`. Peak RSS is the process's high-water mark since it "
        "started (model build and compilation included); each side in its own process.",
        "",
        "| side | frames | peak RSS (MiB) | RSS (MiB) | state arrays (KiB) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for side, r in results.items():
        if "error" in r:
            lines.append(f"| {side} | {r['error']} | | | | |")
            continue
        for m in r["marks"]:
            held = f"{m['state_array_bytes'] / 1024:.1f}" if "state_array_bytes" in m else ""
            rss = f"{m['peak_rss'] / MB:.1f} | {m['rss'] / MB:.1f}"
            lines.append(f"| {side} | {m['frames']} | {rss} | {held} | {m['seconds']:.1f} |")
    lines.append("")
    ours, ref = results.get("ours", {}), results.get("reference", {})
    if ours.get("marks"):
        first, last = ours["marks"][0], ours["marks"][-1]
        ratio = last["peak_rss"] / first["peak_rss"]
        verdict = "meets" if ratio <= 1.1 else "MISSES"
        lines.append(
            f"- ours (`track_stream`): peak RSS after {last['frames']} frames / after {first['frames']} = "
            f"**{ratio:.3f}** ({verdict} the bar <= 1.1); RSS {first['rss'] / MB:.1f} -> {last['rss'] / MB:.1f} MiB; "
            f"the state's arrays {first['state_array_bytes']} -> {last['state_array_bytes']} bytes "
            f"(cap {args.objects} x {ours['cap_per_object']} bytes from `stream_bytes_per_object`); "
            f"{(last['frames'] - first['frames']) / (last['seconds'] - first['seconds']):.1f} frames/s."
        )
    if ref.get("marks"):
        first, last = ref["marks"][0], ref["marks"][-1]
        frames = last["frames"] - first["frames"]
        per_frame = (last["state_array_bytes"] - first["state_array_bytes"]) / frames
        lines.append(
            f"- reference (`init_state` + `propagate_in_video`): `init_state` of {last['frames']} frames took "
            f"{(ref['rss_after_init_state'] - ref['rss_after_build']) / MB:.1f} MiB of RSS (every frame loaded); "
            f"peak RSS after {last['frames']} frames / after {first['frames']} = "
            f"**{last['peak_rss'] / first['peak_rss']:.3f}** (RSS {(last['rss'] - first['rss']) / 1024:.0f} KiB more; "
            f"the allocator's slack hides small tensors at this size); the state's tensors (frames excluded) "
            f"{first['state_array_bytes']} -> {last['state_array_bytes']} bytes, {per_frame / args.objects:.0f} "
            "bytes per frame and object: every frame's outputs are kept (the config's memory features, "
            "low-res mask, pointer and score take exactly "
            f"{reference_per_frame_bytes(get_config(args.model))} bytes)."
        )
    big = hiera_t_per_frame_bytes()
    lines += [
        "",
        "At sam2.1_hiera_tiny, 1024 px (array sizes from the config): the reference's `init_state` holds "
        f"{big['image_per_frame'] / MB:.1f} MiB per frame (float32 frames; 2,000 frames: "
        f"{2000 * big['image_per_frame'] / 2**30:.1f} GiB, or a lazy loader with `async_loading_frames`) and each "
        f"tracked frame adds {big['output_per_frame_object'] / 1024:.0f} KiB per object (bfloat16 memory "
        "features, the low-res mask, pointer); `track_stream` holds at most "
        f"{big['our_cap_per_object'] / MB:.2f} MiB per object whatever the length (one prompted frame; "
        "+0.5 MiB per further prompted frame), plus one frame's features.",
        "",
    ]
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
