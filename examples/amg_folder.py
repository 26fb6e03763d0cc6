"""Auto-mask every image of a folder and save COCO-RLE JSON plus an overlay per image.

    python examples/amg_folder.py --input photos/ --output masks/ --checkpoint sam_vit_b/

``--checkpoint`` is a sam_jax checkpoint folder (``sam-jax convert`` writes one from the official
``.pth``). Without it the bundled demo model runs (trained on synthetic shapes: try it on
``examples/images/shapes.png``). Rerunning skips images already done; images are spread
over every local device. The same, with every flag, is ``sam-jax amg``.
"""

from __future__ import annotations

import argparse

import jax

from sam_jax import load_sam
from sam_jax.amg import SamAutomaticMaskGenerator
from sam_jax.amg.dataset import list_jobs, run_jobs
from sam_jax.assets import demo_checkpoint_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--points-per-side", type=int, default=32)
    args = parser.parse_args()

    model = load_sam(args.checkpoint or demo_checkpoint_dir())
    generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, output_mode="coco_rle")
    summary = run_jobs(
        generator.generate_batch,
        list_jobs(args.input, args.output),
        rle=True,
        write_overlay=True,
        batch_size=jax.local_device_count(),
    )
    print(f"{len(summary.written)} written, {len(summary.skipped)} already done, {len(summary.failed)} unreadable")


if __name__ == "__main__":
    main()
