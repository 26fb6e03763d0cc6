"""Auto-mask every image of a folder and save COCO-RLE JSON plus an overlay per image.

    python examples/amg_folder.py --input photos/ --output masks/ --checkpoint sam_vit_b/

``--checkpoint`` is a sam_jax checkpoint folder (``sam-jax convert`` writes one from the official
``.pth``). Without it, a random-weight ``tiny`` model runs, which only shows the plumbing (its masks
are noise, so the filters are opened wide). Rerunning skips images already done; images are spread
over every local device. The same, with every flag, is ``sam-jax amg``.
"""

from __future__ import annotations

import argparse

import jax

from sam_jax import build_sam, load_sam
from sam_jax.amg import SamAutomaticMaskGenerator
from sam_jax.amg.dataset import list_jobs, run_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--points-per-side", type=int, default=32)
    args = parser.parse_args()

    if args.checkpoint:
        model, settings = load_sam(args.checkpoint), {}
    else:
        model = build_sam("tiny")
        settings = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95)
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, output_mode="coco_rle", **settings
    )
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
