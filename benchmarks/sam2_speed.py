"""SAM 2 image model: sam_jax against Meta's sam2 1.1.0, in one run, interleaved.

    python benchmarks/sam2_speed.py [--model sam2.1_hiera_tiny] [--threads 2] [--rounds 3] [--results FILE]

Both sides hold the same random weights (the reference built from its yaml config, every tensor
redrawn as the parity tests do, then converted by ``sam_jax.convert.sam2_rules``), see the same
real photo (``skimage.data.coffee``) and the same prompt, and run on the same cores with the same
thread count in this one process. Timed per round, alternating reference / sam_jax: ``set_image``
(the image encoder, features ready) and a 1-point ``predict`` (multimask, masks at image size);
medians over rounds of per-round medians; then automatic mask generation at 32 points per
side with a realistic mask set (:data:`AMG_SETTINGS`). Also reports the outputs' agreement and the encoder's
FLOP rate against this machine's own fp32 matmul rate (jnp, 4096^3). Writes Markdown to
``--results`` (default ``benchmarks/SAM2_SPEED.md``).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


# Random weights predict IoUs of about 0.50 +- 0.05 for every candidate (sam2.1_hiera_tiny, seed 7,
# coffee), and no candidate is stable at the default threshold; their masks are near-identical
# blobs, so box NMS would leave a handful. This keeps ~5% of the 3072 candidates (about 150) and
# carries them through every later step (stability scoring, NMS, upscaling, records), as a real
# photo with trained weights would.
AMG_SETTINGS = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.565,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "output_mode": "binary_mask",
}
AMG_NOTE = (
    "Random weights predict IoU 0.50 +- 0.05 for every candidate and none is stable at the default 0.95,"
    " so the reference's defaults keep nothing; this keeps about 5% of the 3072 candidates. sam_jax gets one"
    " untimed run first (it compiles)."
)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round and side")
    parser.add_argument("--amg-rounds", type=int, default=1, help="timed AMG runs per side (0: no AMG row)")
    parser.add_argument("--results", type=Path, default=HERE / "SAM2_SPEED.md")
    args = parser.parse_args()
    harness.pin_threads(args.threads)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as RefGenerator
    from sam2.sam2_image_predictor import SAM2ImagePredictor as RefPredictor

    from sam_jax import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, get_config
    from sam_jax.convert import sam2_rules

    import sam2_reference as ref_lib

    torch.set_num_threads(args.threads)
    cfg = get_config(args.model)
    ref = ref_lib.randomize_(ref_lib.build_from_yaml(args.model), seed=7).eval()
    ours = sam2_rules.build_image_model(cfg, sam2_rules.to_params(ref_lib.state_dict_numpy(ref), cfg))
    image = harness.photo("coffee")
    h, w = image.shape[:2]
    point = {"point_coords": np.array([[w / 2, h / 2]], np.float32), "point_labels": np.array([1], np.int32)}
    rp, op = RefPredictor(ref), SAM2ImagePredictor(ours)

    def ref_set() -> None:
        with torch.inference_mode():
            rp.set_image(image)

    def our_set() -> None:
        op.set_image(image)
        jax.block_until_ready(op.features)

    def ref_predict():
        with torch.inference_mode():
            return rp.predict(**point, multimask_output=True)

    def our_predict():
        return op.predict(**point, multimask_output=True)

    for fn in (ref_set, our_set, ref_predict, our_predict):  # warm-up (compiles)
        fn()
    rounds = {"ref_set": [], "our_set": [], "ref_predict": [], "our_predict": []}
    for _ in range(args.rounds):
        rounds["ref_set"].append(_median_time(ref_set, args.repeats))
        rounds["our_set"].append(_median_time(our_set, args.repeats))
        rounds["ref_predict"].append(_median_time(ref_predict, 3 * args.repeats))
        rounds["our_predict"].append(_median_time(our_predict, 3 * args.repeats))
    med = {k: statistics.median(v) for k, v in rounds.items()}

    amg = {}
    if args.amg_rounds > 0:
        ref_gen, our_gen = RefGenerator(ref, **AMG_SETTINGS), SAM2AutomaticMaskGenerator(ours, **AMG_SETTINGS)
        last = {}

        def ref_amg() -> None:
            with torch.inference_mode():
                last["ref"] = ref_gen.generate(image)

        def our_amg() -> None:
            last["ours"] = our_gen.generate(image)

        our_amg()  # compiles; the reference has nothing to warm up beyond the rows above
        amg["ref"] = _median_time(ref_amg, args.amg_rounds)
        amg["ours"] = _median_time(our_amg, args.amg_rounds)
        areas = {side: sorted(r["area"] for r in last[side]) for side in ("ref", "ours")}
        amg["masks"] = f"{len(last['ref'])} / {len(last['ours'])}, areas equal: {areas['ref'] == areas['ours']}"

    (m_r, iou_r, low_r), (m_o, iou_o, low_o) = ref_predict(), our_predict()
    agree = {
        "image embedding max |diff|": float(np.abs(op.get_image_embedding() - rp.get_image_embedding().numpy()).max()),
        "1-point low-res logits max |diff|": float(np.abs(low_o - low_r).max()),
        "1-point IoU max |diff|": float(np.abs(iou_o - iou_r).max()),
        "1-point masks, pixels differing": int((m_o != m_r).sum()),
    }
    # Encoder FLOPs from XLA's cost analysis of the jitted image step (matmuls and convolutions).
    from sam_jax.core.image import encode

    s = cfg.image_size
    lowered = encode.lower(
        op.graphdef, op.params, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, 2), jnp.int32)
    )
    flops = float((lowered.cost_analysis() or {}).get("flops", 0.0))
    n = 4096
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    mm = harness.timed(lambda: matmul(a, a).block_until_ready(), repeats=5)
    mm_rate = 2 * n**3 / mm["median"]

    lines = [
        f"# SAM 2 image model: sam_jax vs sam2 1.1.0 ({args.model})",
        "",
        f"`python benchmarks/sam2_speed.py --model {args.model} --threads {args.threads} --rounds {args.rounds}` on "
        f"{datetime.date.today().isoformat()}; one process, reference and sam_jax alternating each round, same "
        f"random weights, `skimage.data.coffee` ({h}x{w}), {args.threads} threads each. Medians of per-round medians.",
        "",
        f"Machine: {harness.machine()}",
        "",
        "| measure | reference | sam_jax | speed-up |",
        "|---|---|---|---|",
        f"| set_image (encoder) | {med['ref_set']:.3f} s | {med['our_set']:.3f} s | "
        f"{med['ref_set'] / med['our_set']:.2f}x |",
        f"| predict, 1 point, multimask | {1e3 * med['ref_predict']:.1f} ms | {1e3 * med['our_predict']:.1f} ms | "
        f"{med['ref_predict'] / med['our_predict']:.2f}x |",
        *(
            [
                f"| AMG, 32 points per side, a realistic mask set (masks kept, reference / sam_jax: {amg['masks']}) "
                f"| {amg['ref']:.2f} s | {amg['ours']:.2f} s | {amg['ref'] / amg['ours']:.2f}x |"
            ]
            if amg
            else []
        ),
        "",
        f"AMG settings (both sides): `{AMG_SETTINGS}`. {AMG_NOTE}",
        "",
        f"Encoder: {flops / 1e9:.0f} GFLOP (XLA cost analysis) in {med['our_set']:.3f} s = "
        f"{flops / med['our_set'] / 1e9:.0f} GFLOP/s, {100 * flops / med['our_set'] / mm_rate:.0f}% of this run's "
        f"fp32 4096^3 matmul rate ({mm_rate / 1e9:.0f} GFLOP/s).",
        "",
        "Agreement: " + "; ".join(f"{k} {v:.3g}" for k, v in agree.items()),
        "",
        "Per round (s): " + "; ".join(f"{k} " + ", ".join(f"{x:.3f}" for x in v) for k, v in rounds.items()),
    ]
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
