"""The ``sam-jax`` command line: one subcommand per ``_add_*`` function, each thin over the library.

A subcommand registers its parser in ``_SUBCOMMANDS`` and sets ``run``, a function of the parsed
arguments returning the exit code. Heavy imports (torch, the converter, the model) happen inside
``run``, so ``sam-jax --help`` stays fast. Expected failures (bad input files, wrong options) are
printed as ``sam-jax CMD: error: ...`` on stderr with exit code 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sam_jax.config import CONFIGS, MODEL_TYPES

PROG = "sam-jax"
# Exceptions that mean "the input or the environment is wrong" (a bad file, a missing optional
# dependency such as torch), not "sam_jax has a bug".
USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a PyTorch/transformers SAM checkpoint to a sam_jax checkpoint",
        description=(
            "Convert an official SAM .pth, a MedSAM checkpoint or a transformers SamModel (directory, "
            "model.safetensors or pytorch_model.bin) into a sam_jax checkpoint directory, which "
            "sam_jax.load_sam reads without torch."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="the checkpoint file or transformers directory")
    parser.add_argument("output_dir", type=Path, help="directory to write the sam_jax checkpoint to")
    parser.add_argument(
        "--model-type",
        choices=tuple(CONFIGS),
        metavar="{" + ",".join(MODEL_TYPES) + "}",
        help="check that the checkpoint is this model (default: detect it from the tensor shapes)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite a sam_jax checkpoint in OUTPUT_DIR")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from convert.command import convert_checkpoint

    convert_checkpoint(args.checkpoint, args.output_dir, model_type=args.model_type, force=args.force)
    return 0


def _floats(n: int, what: str) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        sizes = (2, 3) if what == "point" else (n,)
        if len(values) not in sizes or not all(map(math.isfinite, values)):
            raise argparse.ArgumentTypeError(f"{what} must be {_FORMATS[what]}, got {text!r}")
        return values

    return parse


_FORMATS = {"point": "X,Y or X,Y,LABEL (LABEL 1 foreground, 0 background)", "box": "X1,Y1,X2,Y2"}


def _add_segment(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image from points and/or boxes; write mask PNGs, scores and an overlay",
        description=(
            "Prompted segmentation of one image. Points and one box form one prompt; several --box "
            "options give one prediction per box. Writes mask_*.png, scores.json and overlay.png."
        ),
    )
    parser.add_argument("image", type=Path, help="image file (any format Pillow reads)")
    parser.add_argument(
        "--checkpoint", type=Path, help="sam_jax checkpoint directory (default: the bundled demo model)"
    )
    parser.add_argument("--point", action="append", type=_floats(2, "point"), default=[], help=_FORMATS["point"])
    parser.add_argument("--box", action="append", type=_floats(4, "box"), default=[], help=_FORMATS["box"])
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--single-mask", action="store_true", help="one mask per prompt instead of three")
    parser.set_defaults(run=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from sam_jax.build import load_sam
    from sam_jax.segment import segment_to_files

    checkpoint = args.checkpoint
    if checkpoint is None:
        from sam_jax.assets import demo_checkpoint_dir

        checkpoint = demo_checkpoint_dir()
    points = labels = boxes = None
    if args.point:
        points = np.array([p[:2] for p in args.point], np.float32)
        labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point], np.int32)
    if args.box:
        boxes = np.array(args.box, np.float32)
    summary = segment_to_files(
        load_sam(checkpoint),
        args.image,
        args.output,
        points=points,
        labels=labels,
        boxes=boxes,
        multimask_output=not args.single_mask,
    )
    for m in summary["masks"]:
        print(f"{args.output / m['file']}  score {m['score']:.3f}")
    print(f"{args.output / summary['overlay']}")
    return 0


def _add_amg(subparsers: argparse._SubParsersAction) -> None:
    from sam_jax.amg.cli import add_parser

    add_parser(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from sam_jax.train.cli import add_evaluate_parser, add_parser

    add_parser(subparsers)
    add_evaluate_parser(subparsers)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_convert,
    _add_segment,
    _add_amg,
    _add_train,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``sam-jax`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog=PROG, description="Segment Anything in JAX.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sam-jax`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 on success, 2 for a usage error or an expected failure (printed on stderr, no traceback).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
