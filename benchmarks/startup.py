"""Start-up worker: how long a fresh process takes to its first mask, with the compilation cache
in ``$SAM_JAX_CACHE_DIR`` (empty for a cold start, filled by a previous run for a warm one).

``python benchmarks/startup.py --model vit_b --threads 2 --out start.json``. The compile overhead
is the first ``set_image`` + ``predict`` minus the second (same inputs, programs compiled or
loaded by then), so the model's own run time is not counted as compilation.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--image", default="coffee")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    harness.pin_threads(args.threads)

    import jax

    from sam_jax import SamPredictor, build_sam, get_config
    from sam_jax.convert import rules

    t_import = time.perf_counter()
    cfg = get_config(args.model)
    image = harness.photo(args.image)
    p = harness.prompts(image.shape[:2])
    predictor = SamPredictor(build_sam(cfg, params=rules.to_params(harness.fixture_state_dict(args.model), cfg)))
    t_build = time.perf_counter()

    def first_mask() -> float:
        t = time.perf_counter()
        predictor.set_image(image)
        predictor.predict(p["point_coords"], p["point_labels"], multimask_output=True)
        return time.perf_counter() - t

    first = first_mask()
    second = first_mask()
    cache = Path(jax.config.jax_compilation_cache_dir or os.devnull)
    harness.write_json(
        args.out,
        {
            "import_s": t_import - T0,
            "build_s": t_build - t_import,
            "first_mask_s": first,
            "steady_mask_s": second,
            "compile_overhead_s": first - second,
            "cache_dir": str(cache),
            "cache_entries": len(list(cache.iterdir())) if cache.is_dir() else 0,
        },
    )


if __name__ == "__main__":
    main()
