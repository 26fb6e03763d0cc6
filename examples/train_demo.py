"""Reproduce the bundled demo model: train a small SAM from scratch on synthetic shapes, export it,
score it on held-out scenes.

    python examples/train_demo.py out/demo_run --export out/demo_model

The recipe is :data:`sam_jax.train.presets.DEMO_TRAIN` (8000 steps); the bundled model is its
checkpoint at step :data:`~sam_jax.train.presets.DEMO_SHIPPED_STEP` (3000), where this script stops
by default (``--until 8000`` runs the whole recipe). Seeded; about 4 minutes on one H200, one to two
hours on two CPU cores; interrupted runs resume when started again. The same from the command line::

    sam-jax train out/demo_run --preset demo --until 3000 --export out/demo_model
    sam-jax evaluate --checkpoint out/demo_model

Use the result with ``--checkpoint out/demo_model`` (``sam-jax segment``, ``amg``, ``evaluate``).
Exporting to ``sam_jax/assets/demo`` (with ``--force``) would replace the bundled model itself.

``--sample-image`` also writes the README's sample picture (a fixed held-out scene).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from PIL import Image

from sam_jax import build_sam, save_sam
from sam_jax.train import presets
from sam_jax.train.evaluate import evaluate
from sam_jax.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="checkpoints and metrics.jsonl")
    parser.add_argument(
        "--export", type=Path, default=Path("out/demo_model"), help="write the model here (default: %(default)s)"
    )
    parser.add_argument(
        "--until", type=int, default=presets.DEMO_SHIPPED_STEP, help="stop (and export) here (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="replace a model already in --export")
    parser.add_argument("--eval-images", type=int, default=200, help="held-out scenes to score (default: %(default)s)")
    parser.add_argument("--sample-image", type=Path, help="also write the README's sample image here (default: none)")
    args = parser.parse_args()

    cfg = presets.DEMO_TRAIN
    start = time.perf_counter()
    model, _ = train(
        build_sam(presets.DEMO_MODEL, seed=cfg.seed), presets.demo_train_source(), cfg, args.workdir, until=args.until
    )
    print(f"trained to step {min(args.until, cfg.steps)} in {time.perf_counter() - start:.0f} s (this call)")
    save_sam(model, args.export, force=args.force)
    result = evaluate(model, presets.demo_eval_source(args.eval_images))
    print(json.dumps(dataclasses.asdict(result)))
    if args.sample_image is not None:
        Image.fromarray(presets.demo_sample()["image"]).save(args.sample_image)
        print(f"wrote {args.sample_image}")


if __name__ == "__main__":
    main()
