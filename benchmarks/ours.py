"""Benchmark worker for sam_jax, run in its own process.

``python benchmarks/ours.py --model vit_b --threads 2 --out ours.json --arrays ours.npz``
(normally started by ``benchmarks/run.py``). The model holds the fixture weights, converted with
the rule table; JAX runs on its default backend (CPU, GPU or TPU).
"""

from __future__ import annotations

import argparse

import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default="coffee")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: amg")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype")
    parser.add_argument("--out", required=True)
    parser.add_argument("--arrays", required=True, help="npz of outputs, compared with the reference by run.py")
    args = parser.parse_args()
    harness.pin_threads(args.threads)

    import gc

    import flax
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sam_jax import SamPredictor, build_sam, get_config, inference
    from sam_jax.amg import SamAutomaticMaskGenerator
    from sam_jax.convert import rules
    from sam_jax.runtime.precision import cast_model

    dev = jax.devices()[0]
    out: dict = {
        "side": "ours",
        "model": args.model,
        "dtype": args.dtype,
        "machine": harness.machine(),
        "device": f"{dev.platform}: {dev.device_kind}",
        "num_devices": jax.device_count(),
        "threads": {"affinity_cores": harness.usable_cores()},
        "versions": {"jax": jax.__version__, "flax": flax.__version__},
        "timings": {},
        "memory": {},
    }
    image = harness.photo(args.image)
    p = harness.prompts(image.shape[:2])
    arrays = {}
    cfg = get_config(args.model)

    with harness.peak_rss(out["memory"], "peak_load"):
        model = build_sam(cfg, params=rules.to_params(harness.fixture_state_dict(args.model), cfg))
        if args.dtype != "float32":
            model = cast_model(model, jnp.dtype(args.dtype))
        predictor = SamPredictor(model)
        gc.collect()
    out["memory"]["after_load"] = harness.rss_bytes()
    out["compilation_cache_dir"] = jax.config.jax_compilation_cache_dir

    def set_image() -> None:
        predictor.set_image(image)
        jax.block_until_ready(predictor.features)

    with harness.peak_rss(out["memory"], "peak_encoder"):
        out["timings"]["encoder"] = harness.timed(set_image, repeats=args.repeats)
    arrays["embedding"] = np.asarray(predictor.features, np.float32)

    def predict_point():
        return predictor.predict(p["point_coords"], p["point_labels"], multimask_output=True)

    def predict_boxes():
        return predictor.predict_batch(boxes=p["boxes"], multimask_output=False)

    # AMG: one untimed warm-up per setting (it compiles).
    harness.time_decoder_and_amg(
        out,
        arrays,
        args,
        predict_point,
        predict_boxes,
        lambda settings: SamAutomaticMaskGenerator(model, **settings),
        image,
        amg_warmup=1,
    )

    # Achieved FLOP/s of the encoder against this machine's own fp32 (or --dtype) matmul rate.
    s = cfg.img_size
    lowered = inference.encode_images.lower(
        predictor.graphdef,
        predictor.params,
        jax.ShapeDtypeStruct((1, s, s, 3), jnp.uint8),
        jax.ShapeDtypeStruct((1, 2), jnp.int32),
    )
    cost = lowered.cost_analysis()
    out["encoder_flops"] = {
        "analytic_matmul": harness.encoder_flops(cfg.image_encoder),
        "xla_cost_analysis": None if not cost else float(cost.get("flops", 0.0)),
    }
    n = 4096
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), args.dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), args.dtype)
    matmul = jax.jit(jnp.matmul)
    mm = harness.timed(lambda: matmul(a, b).block_until_ready(), repeats=5)
    out["matmul_flops_per_s"] = 2 * n**3 / mm["median"]

    out["memory"]["process_peak"] = harness.process_peak_rss_bytes()
    stats = dev.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["memory"]["device_peak"] = stats["peak_bytes_in_use"]
    np.savez(args.arrays, **arrays)
    harness.write_json(args.out, out)


if __name__ == "__main__":
    main()
