"""Segment an object in an image from a point and/or a box, and save masks plus an overlay.

    python examples/segment_image.py --image examples/images/shapes.png --box 66,14,184,138 --output out/
    python examples/segment_image.py --checkpoint CKPT_DIR --image examples/images/chelsea.jpg \
        --point 220,130 --box 60,20,400,290 --output out/

Without ``--checkpoint`` the bundled demo model runs, as in ``sam-jax segment``: it only knows
synthetic shapes (like ``examples/images/shapes.png``). For photos, CKPT_DIR is a sam_jax checkpoint
made by ``sam-jax convert sam_vit_b_01ec64.pth CKPT_DIR``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image

import sam_jax
from sam_jax.assets import demo_checkpoint_dir
from sam_jax.io import read_image
from sam_jax.visualize import overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", default=None, help="sam_jax checkpoint directory (default: the bundled demo model)"
    )
    parser.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    parser.add_argument("--point", help="X,Y of a foreground point, in pixels (default: none)")
    parser.add_argument("--box", help="X1,Y1,X2,Y2 box around the object, in pixels (default: none)")
    parser.add_argument("--output", default="out", help="folder for mask.png and overlay.png (default: %(default)s)")
    args = parser.parse_args()
    if args.point is None and args.box is None:
        parser.error("give --point, --box or both")

    model = sam_jax.load_sam(args.checkpoint or demo_checkpoint_dir())
    predictor = sam_jax.SamPredictor(model)
    image = read_image(args.image)
    predictor.set_image(image)  # the embedding is computed once per image

    point = None if args.point is None else np.array([[float(v) for v in args.point.split(",")]])
    box = None if args.box is None else np.array([float(v) for v in args.box.split(",")])
    masks, scores, low_res = predictor.predict(
        point_coords=point, point_labels=None if point is None else np.array([1]), box=box
    )
    best = int(np.argmax(scores))
    # Refine: feed the best low-res logits back as a dense prompt, as in the reference notebooks.
    masks, scores, _ = predictor.predict(
        point_coords=point,
        point_labels=None if point is None else np.array([1]),
        box=box,
        mask_input=low_res[best][None],
        multimask_output=False,
    )
    print(f"mask score {scores[0]:.3f}, area {int(masks[0].sum())} px")
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(masks[0].astype(np.uint8) * 255).save(out / "mask.png")
    Image.fromarray(overlay(image, masks, points=point, boxes=box)).save(out / "overlay.png")
    print(f"wrote {out / 'mask.png'} and {out / 'overlay.png'}")


if __name__ == "__main__":
    main()
