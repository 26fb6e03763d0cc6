"""``sam-jax train`` and ``sam-jax evaluate``: thin command lines over :mod:`sam_jax.train`.

Registered by :mod:`sam_jax.cli` through :func:`add_parser` and :func:`add_evaluate_parser`;
each sets ``run`` on the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sam_jax.models import registry
from sam_jax.train.choices import MASK_LOSSES, SCHEDULES, TRAINABLE

if TYPE_CHECKING:
    from sam_jax.data.sources import Example
    from sam_jax.train.loop import TrainConfig

# Only light modules above: this one is imported whenever the `sam-jax` parser is built.
PRESETS = ("demo",)


def _add_data_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--synthetic", action="store_true", help="synthetic shapes (the demo model's data)")
    group.add_argument("--folder", type=Path, metavar="ROOT", help="ROOT/images/* with ROOT/masks/NAME.png (labels)")
    group.add_argument(
        "--coco", nargs=2, type=Path, metavar=("ANNOTATIONS", "IMAGE_DIR"), help="COCO instances JSON and its images"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sam-jax train``."""
    from sam_jax.cli import HelpFormatter

    p = subparsers.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train or fine-tune SAM (resumable; data-parallel over all devices)",
        description=(
            "Train SAM from scratch or fine-tune a sam_jax checkpoint (MedSAM-style: decoder only by default) "
            "on masks from a folder, COCO annotations or synthetic shapes. Prompts (jittered boxes, points, "
            "correction clicks) are sampled from the masks. Running the same command again resumes from the "
            "newest checkpoint in WORKDIR. Reproduce the bundled demo model with: "
            "sam-jax train WORKDIR --preset demo --until 3000 --export DIR"
        ),
        epilog=(
            "Settings left unset take the preset's value with --preset, else the library's default (shown "
            "as 'default'). Ctrl-C stops with status 130; run the same command again to resume from the "
            "last checkpoint."
        ),
    )
    p.add_argument("workdir", type=Path, help="checkpoints and metrics.jsonl go here; resumed if present")
    p.add_argument("--preset", choices=PRESETS, help="a complete recipe (model, data, settings); flags override it")
    _add_data_arguments(p, required=False)
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=Path, help="sam_jax checkpoint directory to fine-tune")
    model.add_argument(
        "--model-type", choices=tuple(registry.all_configs()), help="train this registry model from scratch"
    )
    p.add_argument(
        "--trainable", choices=TRAINABLE, help="parts to train (default: decoder with --checkpoint, else all)"
    )
    p.add_argument("--export", type=Path, metavar="DIR", help="when done, write the model as a sam_jax checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a checkpoint in the --export directory")
    p.add_argument(
        "--until",
        type=int,
        metavar="N",
        help="stop after N batches (--export then writes that model); run again without it to go on",
    )
    run = p.add_argument_group("run settings (default: the preset's, else the library's)")
    run.add_argument("--steps", type=int, help="batches to train on (default: 1000; demo preset: 8000)")
    run.add_argument(
        "--batch-size", type=int, help="images per batch, a multiple of the device count (default: 8; demo: 16)"
    )
    run.add_argument("--max-objects", type=int, help="objects (prompts) per image (default: 4)")
    run.add_argument("--mask-size", type=int, help="grid of the loss and prompt sampling (default: input size)")
    run.add_argument(
        "--cache-embeddings", action="store_true", default=None, help="embed images once (frozen encoder; default: off)"
    )
    run.add_argument("--seed", type=int, help="seed of the data, prompts and initial weights (default: 0)")
    run.add_argument("--log-every", type=int, help="batches per metrics.jsonl record (default: 50; demo: 100)")
    run.add_argument("--checkpoint-every", type=int, help="batches per checkpoint (default: 500; demo: 1000)")
    run.add_argument("--keep", type=int, help="checkpoints to keep (default: 3)")
    run.add_argument("--threads", type=int, help="data-loading threads (default: 2; demo: 8)")
    opt = p.add_argument_group("optimiser")
    opt.add_argument("--lr", type=float, help="peak learning rate, AdamW (default: 1e-4; demo: 1e-3)")
    opt.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default: cosine)")
    opt.add_argument("--warmup", type=int, help="warm-up updates (default: 0; demo: 200)")
    opt.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.01; demo: 0.05)")
    opt.add_argument("--grad-clip", type=float, help="global-norm clip, 0: none (default: 1.0)")
    opt.add_argument("--accumulate", type=int, help="batches per update, gradient accumulation (default: 1)")
    step = p.add_argument_group("loss and prompts")
    step.add_argument(
        "--loss", choices=MASK_LOSSES, help="dice_bce (MedSAM) or focal_dice (SAM, 20:1) (default: dice_bce)"
    )
    step.add_argument("--bf16", action="store_true", default=None, help="compute in bfloat16 (parameters stay fp32)")
    step.add_argument("--box-prob", type=float, help="share of prompts that are boxes (default: 0.5; demo: 0.7)")
    step.add_argument("--max-points", type=int, help="most points in a point prompt (default: 3)")
    step.add_argument("--correction-rounds", type=int, help="iterative correction clicks per prompt (default: 0)")
    p.set_defaults(run=run_train)


def _replace(obj, **changes):
    """``dataclasses.replace`` with the changes that are not None."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def _source(args: argparse.Namespace, *, synthetic: Sequence[Example]) -> Sequence[Example]:
    from sam_jax.data.sources import CocoInstances, MaskFolder

    if args.folder is not None:
        return MaskFolder(args.folder)
    if args.coco is not None:
        return CocoInstances(*args.coco)
    return synthetic


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run ``sam-jax train ARGS`` asks for: the preset's settings (else the library's) with the
    flags given on top."""
    from sam_jax.train import presets
    from sam_jax.train.loop import TrainConfig

    demo = args.preset == "demo"
    base = presets.DEMO_TRAIN if demo else TrainConfig(trainable="decoder" if args.checkpoint else "all")
    optimizer = _replace(
        base.optimizer,
        learning_rate=args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        accumulate=args.accumulate,
    )
    if args.grad_clip is not None:  # 0 turns clipping off (None, which _replace would skip)
        optimizer = dataclasses.replace(optimizer, grad_clip=args.grad_clip or None)
    cfg = _replace(
        base,
        steps=args.steps,
        batch_size=args.batch_size,
        max_objects=args.max_objects,
        mask_size=args.mask_size,
        trainable=args.trainable,
        cache_embeddings=args.cache_embeddings,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep,
        num_threads=args.threads,
        optimizer=optimizer,
        step=_replace(
            base.step,
            mask_loss=args.loss,
            compute_dtype="bfloat16" if args.bf16 else None,
            prompts=_replace(
                base.step.prompts,
                box_prob=args.box_prob,
                max_points=args.max_points,
                correction_rounds=args.correction_rounds,
            ),
        ),
    )
    # Files are shuffled and repeated; synthetic scenes are an endless stream already.
    return dataclasses.replace(cfg, shuffle=bool(args.folder or args.coco))


def run_train(args: argparse.Namespace) -> int:
    """Run ``sam-jax train``; returns the exit code."""
    from sam_jax.build import build_sam, load_sam, save_sam
    from sam_jax.checkpoint import CONFIG_FILE
    from sam_jax.train import presets
    from sam_jax.train.loop import train

    demo = args.preset == "demo"
    if not (demo or args.synthetic or args.folder or args.coco):
        raise ValueError("give the data: --synthetic, --folder ROOT or --coco ANNOTATIONS IMAGE_DIR (or --preset)")
    if not (demo or args.checkpoint or args.model_type):
        raise ValueError("give the model: --checkpoint DIR to fine-tune or --model-type NAME (or --preset)")
    if args.export is not None and (args.export / CONFIG_FILE).exists() and not args.force:
        raise FileExistsError(f"{args.export} already holds a checkpoint; pass --force to overwrite it")
    cfg = train_config(args)
    if args.checkpoint is not None:
        model = load_sam(args.checkpoint)
    else:
        model = build_sam(args.model_type or presets.DEMO_MODEL, seed=cfg.seed)
    source = _source(args, synthetic=presets.demo_train_source())
    try:
        model, _ = train(model, source, cfg, args.workdir, until=args.until)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_resume_message(args.workdir)) from None
    if args.until is not None and args.until < cfg.steps:
        print(f"stopped after {args.until} of {cfg.steps} batches; run without --until to continue")
    if args.export is not None:
        save_sam(model, args.export, force=args.force)
        print(f"wrote {args.export}")
    return 0


def _resume_message(workdir: Path) -> str:
    """What rerunning an interrupted ``sam-jax train`` does: resume from its newest checkpoint."""
    from sam_jax.train.loop import CHECKPOINT_DIR

    folder = workdir / CHECKPOINT_DIR
    # Orbax names a finished checkpoint by its step; unfinished ones carry a temporary suffix.
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    if not steps:
        return "no checkpoint was saved yet; running the same command again starts over"
    return f"the last checkpoint is at batch {max(steps)}; run the same command again to resume from it"


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sam-jax evaluate``."""
    from sam_jax.cli import HelpFormatter

    p = subparsers.add_parser(
        "evaluate",
        formatter_class=HelpFormatter,
        help="mIoU with one box / one point per object",
        description=(
            "Prompt every object once with its bounding box and once with a click at its innermost point; "
            "print the mean IoUs as JSON. Default: the bundled demo model on held-out synthetic shapes."
        ),
    )
    p.add_argument("--checkpoint", type=Path, help="sam_jax checkpoint directory (default: the bundled demo model)")
    _add_data_arguments(p, required=False)
    p.add_argument("--num-images", type=int, default=200, help="images to score (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch")
    p.add_argument("--max-objects", type=int, default=8, help="objects per image (default: %(default)s)")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``sam-jax evaluate``; prints the result as JSON and returns the exit code."""
    from sam_jax.assets import demo_checkpoint_dir
    from sam_jax.build import load_sam
    from sam_jax.train import presets
    from sam_jax.train.evaluate import evaluate

    model = load_sam(demo_checkpoint_dir() if args.checkpoint is None else args.checkpoint)
    source = _source(args, synthetic=presets.demo_eval_source(args.num_images))
    result = evaluate(
        model, source, num_images=args.num_images, batch_size=args.batch_size, max_objects=args.max_objects
    )
    print(json.dumps(dataclasses.asdict(result)))
    return 0
