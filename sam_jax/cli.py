"""The ``sam-jax`` command line: one subcommand per ``_add_*`` function, each thin over the library.

A subcommand registers its parser in ``_SUBCOMMANDS`` and sets ``run``, a function of the parsed
arguments returning the exit code. Heavy imports (torch, the converter, the model) happen inside
``run``, so ``sam-jax --help`` stays fast. Expected failures (bad input files, wrong options) are
printed as ``sam-jax CMD: error: ...`` on stderr with exit code 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
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


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_convert,)


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
