"""``sam-jax amg``: automatic masks for an image or a folder, flags as the reference's
``scripts/amg.py``, plus resume, overlays and multi-process runs under ``jax.distributed``.

Wire into a top-level parser with :func:`add_parser`; run standalone as
``python -m sam_jax.amg.cli --input ... --output ... --checkpoint ...``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

DESCRIPTION = (
    "Runs automatic mask generation on an input image or a folder of images (walked recursively) and "
    "writes, per image, a folder of PNG masks with metadata.csv or, with --convert-to-rle, one COCO-RLE "
    "JSON. Finished images are skipped on restart. Under jax.distributed each process takes its share. "
    "A SAM 2 checkpoint runs SAM 2's generator, whose reference defaults differ (pred_iou_thresh 0.8, "
    "min_mask_region_area spent on its predictor's hole filling); the defaults shown are SAM 1's."
)
EPILOG = (
    "Exit status: 0 when every input image was processed (or was already done); 1 when some input could "
    "not be read as an image (not an image, truncated or corrupt): every other image is still processed, "
    "the unreadable ones are named in the final line 'written N, already done M, unreadable K: PATHS' and "
    "retried by the next run; 2 for bad options or settings; 130 when interrupted (Ctrl-C): finished images "
    "are kept and running the same command again resumes with the rest."
)
# AMG settings: flag name -> (type, the generator's default, help). Unset flags keep the generator's
# defaults, as in the reference; the defaults are repeated here for --help (a test checks they agree),
# because importing the generator (and JAX) would make `sam-jax --help` slow.
AMG_SETTINGS: dict[str, tuple[type, int | float, str]] = {
    "points_per_side": (int, 32, "Sample a grid with this many points to a side (>= 1)."),
    "points_per_batch": (int, 64, "Points decoded at once per device (>= 1)."),
    "pred_iou_thresh": (float, 0.88, "Exclude masks whose predicted IoU is not above this, in [0, 1] (0: off)."),
    "stability_score_thresh": (float, 0.95, "Exclude masks with a stability score below this, in [0, 1] (0: off)."),
    "stability_score_offset": (float, 1.0, "Logit offset used to measure the stability score (>= 0)."),
    "box_nms_thresh": (float, 0.7, "Box IoU above which a duplicate mask is removed, in [0, 1]."),
    "crop_n_layers": (int, 0, "If > 0, also generate on this many layers of image crops."),
    "crop_nms_thresh": (float, 0.7, "Box IoU above which a duplicate mask across crops is removed, in [0, 1]."),
    "crop_overlap_ratio": (float, 512 / 1500, "Fraction of the image by which first-layer crops overlap, in [0, 1)."),
    "crop_n_points_downscale_factor": (int, 1, "Points per side are divided by this per crop layer (>= 1)."),
    "min_mask_region_area": (int, 0, "Remove holes and islands smaller than this many pixels (0: off)."),
}


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``amg`` arguments to ``parser``."""
    parser.add_argument("--input", required=True, help="An image, or a folder of images.")
    parser.add_argument("--output", required=True, help="Folder for the outputs (created).")
    parser.add_argument(
        "--model-type",
        default=None,
        help="'default', 'vit_h', 'vit_l' or 'vit_b': checked against the checkpoint (default: any).",
    )
    parser.add_argument(
        "--checkpoint",
        help="A sam_jax checkpoint folder (from `sam-jax convert`); default: the bundled demo model.",
    )
    parser.add_argument("--device", default=None, help="JAX platform to run on: cpu, gpu or tpu (default: JAX's).")
    parser.add_argument(
        "--convert-to-rle", action="store_true", help="Write one COCO-RLE JSON per image instead of PNG folders."
    )
    parser.add_argument("--overlay", action="store_true", help="Also write <name>.overlay.png with the masks drawn.")
    parser.add_argument("--batch-size", type=int, default=None, help="Images per batch (default: local devices).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar and no information lines.")
    from sam_jax.cli import add_dtype_option

    add_dtype_option(parser)
    amg = parser.add_argument_group("AMG Settings")
    for name, (kind, default, text) in AMG_SETTINGS.items():
        shown = f"{default:.4g}" if isinstance(default, float) else default
        amg.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=f"{text} (default: {shown})")
    dist = parser.add_argument_group("Multi-process (jax.distributed)")
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="Call jax.distributed.initialize() (arguments below, or auto-detected on clusters).",
    )
    dist.add_argument("--coordinator-address", default=None, help="host:port of process 0.")
    dist.add_argument("--num-processes", type=int, default=None, help="Processes in the run (default: detected).")
    dist.add_argument("--process-id", type=int, default=None, help="This process's index (default: detected).")
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``amg`` on a ``sam-jax`` subcommand parser; its ``run`` default is :func:`run`
    (``sam_jax.cli.main`` calls ``args.run(args)``)."""
    from sam_jax.cli import HelpFormatter

    parser = subparsers.add_parser(
        "amg",
        help="Automatic mask generation over images.",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    build_parser(parser)
    parser.set_defaults(run=run)
    return parser


def amg_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Generator arguments from the AMG flags that were given."""
    return {k: getattr(args, k) for k in AMG_SETTINGS if getattr(args, k) is not None}


def run(args: argparse.Namespace) -> int:
    """Run ``sam-jax amg``. Returns the exit status: 0, or 1 when some images could not be read (see
    :data:`EPILOG`). Bad settings raise ``ValueError`` (printed by ``sam_jax.cli.main`` as one line,
    status 2); Ctrl-C raises :class:`sam_jax.amg.dataset.Interrupted`, whose message says what was done."""
    import jax

    if args.distributed or args.coordinator_address is not None:
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    from sam_jax.amg import mask_generator
    from sam_jax.amg.dataset import list_jobs, run_jobs, shard
    from sam_jax.build import load_sam, sam_model_registry

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("sam_jax.amg")
    # basicConfig is a no-op when a library configured logging first. --quiet: warnings only (the
    # unreadable files and, when there are any, the summary naming them).
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    jobs = shard(list_jobs(args.input, args.output), jax.process_index(), jax.process_count())
    devices = jax.local_devices(backend=args.device)
    if args.checkpoint is None:
        from sam_jax.assets import demo_checkpoint_dir

        args.checkpoint = demo_checkpoint_dir()
    if args.model_type is None:
        model = load_sam(args.checkpoint, dtype=args.dtype)
    elif args.model_type in sam_model_registry:
        model = sam_model_registry[args.model_type](args.checkpoint)
        if args.dtype != "float32":
            from sam_jax.runtime.precision import cast_model

            model = cast_model(model, args.dtype)
    else:
        raise ValueError(f"--model-type must be one of {sorted(sam_model_registry)}, got {args.model_type!r}")
    rle = args.convert_to_rle
    # Settings are checked (ValueError naming the bad one) before anything is read or written.
    # The checkpoint's family picks the generator (SAM 1 or SAM 2, each with its reference's defaults).
    generator = mask_generator(
        model, output_mode="coco_rle" if rle else "binary_mask", devices=devices, **amg_kwargs(args)
    )
    log.info(
        "process %d/%d: %d images on %d %s device(s)",
        jax.process_index(),
        jax.process_count(),
        len(jobs),
        len(devices),
        devices[0].platform,
    )
    summary = run_jobs(
        generator.generate_batch,
        jobs,
        rle=rle,
        write_overlay=args.overlay,
        batch_size=args.batch_size or len(devices),
        progress=not args.quiet,
    )
    # Unreadable inputs are a failure of the run (status 1), reported after everything else was done.
    log.log(logging.WARNING if summary.failed else logging.INFO, "%s", summary.line())
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m sam_jax.amg.cli``."""
    from sam_jax.cli import HelpFormatter, run_command

    parser = argparse.ArgumentParser(
        prog="sam-jax amg", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    build_parser(parser)
    return run_command("amg", run, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
