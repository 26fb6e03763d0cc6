"""Auto-mask every image of a folder and save COCO-RLE JSON plus an overlay per image.

    python examples/amg_folder.py --input photos/ --output masks/ --checkpoint sam_vit_b/

``--checkpoint`` is a sam_jax checkpoint folder (``sam-jax convert`` writes one from the official
``.pth``). Without it the bundled demo model runs (trained on synthetic shapes: try it on
``examples/images/shapes.png``). Rerunning skips images already done; images are spread
over every local device. The same, with every flag, is ``sam-jax amg``.

Exit status, as ``sam-jax amg``'s: 0 when every image was processed (or already done); 1 when some
input could not be read as an image (every other image is still processed; the last line,
``written N, already done M, unreadable K: PATHS``, names them); 2 for bad settings; 130 when
interrupted (Ctrl-C; finished images are kept and running again resumes).
"""

from __future__ import annotations

import argparse
import sys

import jax

from sam_jax import load_sam
from sam_jax.amg import SamAutomaticMaskGenerator
from sam_jax.amg.dataset import Interrupted, list_jobs, run_jobs
from sam_jax.assets import demo_checkpoint_dir


def main() -> int:
    """Run the example; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="an image, or a folder of images (walked recursively)")
    parser.add_argument("--output", required=True, help="folder for <name>.json and <name>.overlay.png (created)")
    parser.add_argument(
        "--checkpoint", default=None, help="sam_jax checkpoint folder (default: the bundled demo model)"
    )
    parser.add_argument(
        "--points-per-side", type=int, default=32, help="grid points per image side (default: %(default)s)"
    )
    args = parser.parse_args()

    model = load_sam(args.checkpoint or demo_checkpoint_dir())
    try:
        generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, output_mode="coco_rle")
        jobs = list_jobs(args.input, args.output)
    except (ValueError, OSError) as e:  # a bad setting or a missing --input: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = run_jobs(
            generator.generate_batch, jobs, rle=True, write_overlay=True, batch_size=jax.local_device_count()
        )
    except Interrupted as e:  # Ctrl-C: say what was done and that rerunning resumes
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    print(summary.line())
    # Unreadable inputs fail the run (status 1), as in `sam-jax amg`, after everything else was done.
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
