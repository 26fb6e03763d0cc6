"""Track two objects through a short clip with SAM2VideoPredictor and write an overlay video.

    python examples/track_video.py --checkpoint SAM2_DIR --output out/
    python examples/track_video.py --output out/            # random weights: runs, masks meaningless

The clip is the ``shapes`` clip of ``tests/fixtures/make_video_clips.py`` (16 frames; object 2 leaves
the frame for frames 5-10 and comes back). Each object gets one click on frame 0 at its true centre;
the script prints every frame's IoU with the true masks and writes ``out/track.mp4``. SAM2_DIR is a
SAM 2 checkpoint converted with ``sam-jax convert sam2.1_hiera_tiny.pt SAM2_DIR`` (it keeps the video
weights). The same from the command line: ``sam-jax track out/shapes --checkpoint SAM2_DIR --point
X,Y --obj-id 2 --point X,Y --output out/track``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import sam_jax
from sam_jax.predictors.sam2_video import SAM2VideoPredictor
from sam_jax.video_frames import write_video
from sam_jax.visualize import overlay

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "fixtures"))
from make_video_clips import FPS, write_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="converted SAM 2 checkpoint directory (default: random sam2_test weights)")
    parser.add_argument("--output", default="out", help="folder for the clip and track.mp4 (default: %(default)s)")
    args = parser.parse_args()

    if args.checkpoint:
        predictor = SAM2VideoPredictor(sam_jax.load_sam(args.checkpoint))
    else:
        # No SAM 2 weights are bundled: the small test configuration with random weights shows the
        # API end to end (its masks are noise; pass --checkpoint for real ones).
        from sam_jax.convert.sam2_video_rules import build_video_parts

        cfg = sam_jax.get_config("sam2_test")
        predictor = SAM2VideoPredictor(sam_jax.build_sam(cfg), build_video_parts(cfg, seed=1))

    out = Path(args.output)
    video, clip = write_clip("shapes", out, "jpg")  # out/shapes/00000.jpg ...
    state = predictor.init_state(video_path=str(video))
    for k, obj_id in enumerate(clip.obj_ids):
        _, obj_ids, logits = predictor.add_new_points_or_box(
            state, frame_idx=0, obj_id=obj_id, points=clip.points[0, k][None], labels=np.array([1])
        )

    masks = {}
    for t, obj_ids, logits in predictor.propagate_in_video(state):
        masks[t] = np.asarray(logits)[:, 0] > 0  # (objects, H, W), objects in obj_ids order
        ious = []
        for k in range(len(obj_ids)):
            truth = clip.masks[t, k]
            union = (masks[t][k] | truth).sum()
            ious.append("absent" if not truth.any() else f"{(masks[t][k] & truth).sum() / union:.2f}")
        print(f"frame {t:2d}: IoU " + ", ".join(f"obj {i} {v}" for i, v in zip(obj_ids, ious, strict=True)))

    write_video(out / "track.mp4", (overlay(f, masks[t]) for t, f in enumerate(clip.frames)), FPS)
    print(out / "track.mp4")


if __name__ == "__main__":
    main()
