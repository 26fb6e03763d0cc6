"""``sam-jax annotate`` (the web tool) and ``sam-jax annotate-export`` (one COCO file for a folder).

Wire into the ``sam-jax`` parser with :func:`add_parsers`; each parser's ``run`` default returns the
exit code. Standalone: ``python -m sam_jax.apps.annotate.cli annotate IMAGES_DIR``.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "sam-jax"
DEFAULT_PORT = 8765
USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


def _labels(values: Sequence[str] | None) -> list[str]:
    """``["cat,dog", "bird"]`` -> ``["cat", "dog", "bird"]`` (stripped, deduplicated, in order)."""
    out = [v.strip() for text in values or () for v in text.split(",")]
    return list(dict.fromkeys(v for v in out if v))


def is_local(host: str) -> bool:
    """Whether binding ``host`` serves only this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``annotate`` and ``annotate-export``."""
    from sam_jax.cli import HelpFormatter

    p = subparsers.add_parser(
        "annotate",
        formatter_class=HelpFormatter,
        help="annotate a folder of images in the browser (click to segment, COCO output)",
        description=(
            "Start a local web page to annotate the images of IMAGES_DIR with SAM: clicks and boxes "
            "give masks, several labelled objects per image, 'segment everything', brush and eraser. "
            "Every change is saved at once as COCO-style JSON in the output folder."
        ),
    )
    p.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="folder of images (walked recursively)")
    p.add_argument("--checkpoint", type=Path, help="sam_jax checkpoint directory (default: the bundled demo model)")
    p.add_argument(
        "--labels",
        action="append",
        metavar="A,B,...",
        help="class labels offered for objects, comma-separated (default: object)",
    )
    p.add_argument("--output", type=Path, help="annotations folder (default: IMAGES_DIR/annotations)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0 picks a free one)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach (there is no login: anyone who reaches it can edit)",
    )
    p.add_argument("--save-png", action="store_true", help="also write every mask as a PNG next to the JSON")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--no-warmup", action="store_true", help="do not compile the decoder ahead of the first clicks")
    p.set_defaults(run=run_annotate)

    e = subparsers.add_parser(
        "annotate-export",
        formatter_class=HelpFormatter,
        help="write one COCO dataset JSON for a folder annotated with `sam-jax annotate`",
        description=(
            "Merge the per-image annotation files of IMAGES_DIR into one COCO dataset (images, "
            "categories from the labels, annotations with RLE segmentation, bbox and area)."
        ),
    )
    e.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="the annotated images folder")
    e.add_argument("out", type=Path, metavar="OUT.json", help="the COCO file to write")
    e.add_argument("--output", type=Path, help="annotations folder (default: IMAGES_DIR/annotations)")
    e.add_argument("--labels", action="append", metavar="A,B,...", help="category order (others follow)")
    e.add_argument("--annotated-only", action="store_true", help="leave out images without annotations")
    e.set_defaults(run=run_export)


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket (so the printed URL carries the real port, even for ``--port 0``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port (0: any free one)") from e
    sock.set_inheritable(True)
    # Listening before the URL is printed: a browser opened at once is queued, not refused, until
    # the server starts accepting.
    sock.listen(128)
    return sock


def _url(host: str, port: int) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def run_annotate(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C (exit code 130)."""
    if not is_local(args.host) and not args.allow_remote:
        raise ValueError(
            f"--host {args.host} would let other machines read the images and change the annotations; "
            "add --allow-remote if that is intended"
        )
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        import uvicorn

        from sam_jax.apps.annotate.guard import LOCAL_HOSTS
        from sam_jax.apps.annotate.server import create_app

        print(f"{PROG} annotate: loading the model…", file=sys.stderr, flush=True)
        app = create_app(
            args.images_dir,
            args.output,
            args.checkpoint,
            _labels(args.labels) or None,
            save_png=args.save_png,
            warmup=not args.no_warmup,
            allowed_hosts=None if args.allow_remote else LOCAL_HOSTS,
        )
        annotator = app.state.annotator
        sock = _bind(args.host, args.port)
        port = sock.getsockname()[1]
        url = _url(args.host, port)
        if not is_local(args.host):
            print(
                f"{PROG} annotate: WARNING: listening on {args.host}:{port}, reachable from other machines; "
                "there is no login: anyone who can connect can see the images and edit the annotations",
                file=sys.stderr,
            )
        n = len(annotator.images.names())
        print(f"{PROG} annotate: {n} images in {annotator.images.root}; annotations in {annotator.output.root}")
        print(f"{PROG} annotate: open {url}  (Ctrl-C to stop)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
        # uvicorn stops gracefully on Ctrl-C and then re-raises it as KeyboardInterrupt.
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        print(f"{PROG} annotate: stopped", file=sys.stderr)
        return 130
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write the COCO dataset of an annotated folder."""
    from sam_jax.apps.annotate.paths import ImageFolder, OutputFolder
    from sam_jax.apps.annotate.store import AnnotationStore

    out_dir = args.output if args.output is not None else args.images_dir / "annotations"
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no annotations folder {out_dir}; annotate with `{PROG} annotate` or pass --output")
    images = ImageFolder(args.images_dir, exclude=[out_dir])
    store = AnnotationStore(images, OutputFolder(out_dir), _labels(args.labels))
    counts = store.write_export(args.out, annotated_only=args.annotated_only)
    print(
        f"{args.out}: {counts['images']} images, {counts['annotations']} annotations, {counts['categories']} categories"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point with the same two subcommands (and exit codes) as ``sam-jax``."""
    parser = argparse.ArgumentParser(prog=PROG, description="sam-jax annotation tool")
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
