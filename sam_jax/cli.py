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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sam_jax.models import registry

PROG = "sam-jax"
# Exceptions that mean "the input or the environment is wrong" (a bad file, a missing optional
# dependency such as torch), not "sam_jax has a bug".
USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


# Exit status of an interrupted command (Ctrl-C): 128 + SIGINT, as shells report it.
INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default after its help text, unless there is none to show (None,
    False, an empty list) or the text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return action.help
        return f"{text} (default: %(default)s)".strip()


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        formatter_class=HelpFormatter,
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
        choices=tuple(registry.all_configs()),
        metavar="{" + ",".join(registry.model_types()) + "}",
        help="check that the checkpoint is this model (default: detect it from the tensor shapes)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite a sam_jax checkpoint in OUTPUT_DIR")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from sam_jax.convert.command import convert_checkpoint

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
        formatter_class=HelpFormatter,
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
    add_dtype_option(parser)
    parser.set_defaults(run=_run_segment)


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` for the commands that load a model (segment, amg); the choices are
    ``sam_jax.runtime.precision.PRECISIONS``, spelled out so that ``--help`` imports no JAX."""
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: bf16 weights and matmul operands, fp32 accumulation (sam_jax.runtime.precision)",
    )


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
        load_sam(checkpoint, dtype=args.dtype),
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
    if args.checkpoint is None and not _is_demo_sample(args.image, summary["image_size"]):
        print(DEMO_HINT, file=sys.stderr)
    return 0


# Printed when the demo model (no --checkpoint) segments anything but its own sample image: on
# photos its masks are meaningless, which a new user would otherwise blame on the package.
DEMO_HINT = (
    f"{PROG} segment: note: no --checkpoint, so the bundled demo model ran; it only knows synthetic shapes "
    "(like examples/images/shapes.png): for real photos convert a SAM checkpoint with `sam-jax convert` "
    "and pass --checkpoint DIR"
)


def _is_demo_sample(path: Path, image_size: list[int]) -> bool:
    """Whether ``path`` holds the bundled sample image examples/images/shapes.png (by its pixels,
    so a copy counts; an image of another size is not read again)."""
    import numpy as np

    from sam_jax.io import read_image
    from sam_jax.train import presets

    sample = presets.demo_sample()["image"]
    return list(sample.shape[:2]) == list(image_size) and np.array_equal(read_image(path), sample)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        formatter_class=HelpFormatter,
        help="export a model's encoder and decoder as portable jax.export programs",
        description=(
            "Write the image encoder and the prompt+mask decoder of a sam_jax checkpoint as serialized "
            "StableHLO (jax.export; cpu, cuda and tpu), its weights and manifest.json to OUTPUT_DIR. "
            "sam_jax.export.runtime.ExportedSam runs them without sam_jax's model code."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="sam_jax checkpoint directory (see `sam-jax convert`)")
    parser.add_argument("output_dir", type=Path, help="directory to write the export to")
    parser.add_argument(
        "--point-slots",
        type=lambda t: [int(v) for v in t.split(",")],
        default="1,2,4,8,16",
        help="point-slot buckets to export decoders for (powers of two; clicks + 1 padding point)",
    )
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=16,
        help="largest prompt bucket: decoders for 1, 2, 4, ... up to it prompts per call, as the predictors "
        "pad them (power of two; more prompts run in chunks of it, bitwise the predictors' on a CPU only)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an export in OUTPUT_DIR")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from sam_jax.build import load_sam
    from sam_jax.export.writer import export_model

    start = time.perf_counter()
    manifest = export_model(
        load_sam(args.checkpoint),
        args.output_dir,
        point_slots=args.point_slots,
        max_prompts=args.max_prompts,
        force=args.force,
    )
    print(
        f"{args.output_dir}: 2 encoder + {len(manifest['decoders'])} decoder programs ({manifest['family']}) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 0


class _TrackPrompt(argparse.Action):
    """``--point``/``--box`` of ``track``: one ``(kind, frame, obj_id, values)`` in ``prompts``, with the
    ``--frame`` and ``--obj-id`` given last before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind = "point" if option_string == "--point" else "box"
        namespace.prompts = [*(namespace.prompts or []), (kind, namespace.frame, namespace.obj_id, values)]
        namespace.unused = None


class _TrackTarget(argparse.Action):
    """``--frame``/``--obj-id`` of ``track``: sets the frame / object of the prompts that follow."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.unused = f"{option_string} {values}"


def _add_track(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "track",
        formatter_class=HelpFormatter,
        help="track objects through a video with SAM 2; write per-frame masks and an overlay video",
        description=(
            "Prompt objects on some frames of a video (a folder of JPEG frames <index>.jpg, or a video "
            "file: mp4, mov, mkv, webm, ...) and track them with a SAM 2 video model. --frame and --obj-id "
            "set the frame and object of the --point/--box options after them, e.g. `--frame 0 --obj-id 1 "
            "--point 120,80 --obj-id 2 --box 10,20,60,90 --frame 8 --obj-id 1 --point 130,85,0` (a "
            "correction click on frame 8). Tracks from the first prompted frame to the end (--reverse: from "
            "the last prompted frame back to frame 0). Writes OUTPUT/masks/<frame>.png (indexed PNG, pixel "
            "= object id; where objects overlap the higher id wins) or <frame>.json (--format coco: COCO RLE "
            "per object), OUTPUT/overlay.mp4 and OUTPUT/track.json. Rerunning the same command re-tracks "
            "from the prompts (a tracker cannot start mid-video) and keeps the mask files already written; "
            "a finished run is not tracked again."
        ),
    )
    parser.add_argument("video", type=Path, help="a folder of JPEG frames (<index>.jpg) or a video file")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="a converted SAM 2 checkpoint directory (required: no bundled SAM 2 model)",
    )
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--frame", type=int, default=0, metavar="N", action=_TrackTarget, help="frame index of the prompts that follow"
    )
    parser.add_argument(
        "--obj-id",
        type=int,
        default=1,
        metavar="K",
        action=_TrackTarget,
        help="object id (1..255 with PNG output) of the prompts that follow",
    )
    parser.add_argument(
        "--point",
        action=_TrackPrompt,
        type=_floats(2, "point"),
        dest="prompts",
        default=[],
        metavar="X,Y[,LABEL]",
        help=_FORMATS["point"],
    )
    parser.add_argument(
        "--box",
        action=_TrackPrompt,
        type=_floats(4, "box"),
        dest="prompts",
        default=[],
        metavar="X1,Y1,X2,Y2",
        help=_FORMATS["box"],
    )
    parser.add_argument(
        "--format", dest="fmt", choices=("png", "coco"), default="png", help="mask files: indexed PNG or COCO RLE"
    )
    parser.add_argument("--reverse", action="store_true", help="track backwards from the last prompted frame")
    parser.add_argument(
        "--max-frames",
        type=int,
        metavar="N",
        help="track at most N frames beyond the start (the reference's max_frame_num_to_track; default: to the end)",
    )
    parser.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True, help="write overlay.mp4")
    parser.add_argument("--force", action="store_true", help="replace another run's output in OUTPUT")
    parser.set_defaults(run=_run_track, unused=None)


def _run_track(args: argparse.Namespace) -> int:
    from sam_jax.track import check_video_checkpoint, group_prompts, load_video_predictor, track_to_files

    if args.unused is not None:
        raise ValueError(f"{args.unused} is not followed by a --point or --box (it applies to the prompts after it)")
    prompts = group_prompts(args.prompts)
    check_video_checkpoint(args.checkpoint)
    manifest = track_to_files(
        lambda: load_video_predictor(args.checkpoint),
        args.video,
        args.output,
        prompts,
        fmt=args.fmt,
        reverse=args.reverse,
        max_frames=args.max_frames,
        write_overlay_video=args.overlay,
        force=args.force,
        checkpoint=str(Path(args.checkpoint).resolve()),
    )
    first, last = manifest["frames"]
    what = "tracked" if manifest["tracked"] else "already complete:"
    print(
        f"{args.output / 'masks'}: {what} frames {first}..{last}, objects {manifest['obj_ids']} "
        f"({manifest['written']} files written, {manifest['kept']} kept)"
    )
    if args.overlay:
        print(args.output / "overlay.mp4")
    return 0


def _add_amg(subparsers: argparse._SubParsersAction) -> None:
    from sam_jax.amg.cli import add_parser

    add_parser(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from sam_jax.train.cli import add_evaluate_parser, add_parser

    add_parser(subparsers)
    add_evaluate_parser(subparsers)


def _add_annotate(subparsers: argparse._SubParsersAction) -> None:
    from sam_jax.apps.annotate.cli import add_parsers

    add_parsers(subparsers)  # annotate, annotate-export


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_convert,
    _add_segment,
    _add_export,
    _add_track,
    _add_amg,
    _add_train,
    _add_annotate,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``sam-jax`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog=PROG, description="Segment Anything in JAX.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


# What rerunning an interrupted command does, for the one-line message (amg and train raise
# KeyboardInterrupt with their own, more precise message).
_RERUN = {
    "convert": "the output may be incomplete; run the command again (with --force if it asks)",
    "train": "run the same command again to resume from the last checkpoint in WORKDIR",
    "evaluate": "no result; run it again (nothing is saved part-way)",
    "segment": "run it again (outputs are written atomically; some may be missing)",
    "export": "the output is incomplete; run it again with --force",
    "track": "mask files written are whole; run the same command again: it re-tracks from the prompts, keeping them",
    "amg": "run the same command again to resume",
    "annotate": "stopped; every saved annotation is on disk, run the same command to continue",
}


def run_command(command: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)`` with expected failures and Ctrl-C turned into one line on stderr.

    A user error (:data:`USER_ERRORS`) prints ``sam-jax COMMAND: error: ...`` and returns 2; Ctrl-C
    prints ``sam-jax COMMAND: interrupted: ...`` (the exception's message, else what rerunning does)
    and returns :data:`INTERRUPTED` (130). Anything else is a bug and keeps its traceback.
    """
    try:
        return run(args)
    except USER_ERRORS as error:
        print(f"{PROG} {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        # A traceback through JAX's frames says nothing useful about a Ctrl-C.
        message = str(interrupt) or _RERUN.get(command, "stopped")
        print(f"{PROG} {command}: interrupted: {message}", file=sys.stderr)
        return INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sam-jax`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 on success, 2 for a usage error or an expected failure (printed on stderr, no traceback), 130
    when interrupted (Ctrl-C; one line on stderr saying what rerunning does), and for ``amg`` 1 when
    some input images could not be read.
    """
    args = build_parser().parse_args(argv)
    return run_command(args.command, args.run, args)
