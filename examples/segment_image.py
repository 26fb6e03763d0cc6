"""Segment an object in a photo from a point and/or a box, and save masks plus an overlay.

    python examples/segment_image.py --checkpoint CKPT_DIR --image examples/images/chelsea.jpg \
        --point 220,130 --box 60,20,400,290 --output out/

CKPT_DIR is a sam_jax checkpoint made by ``sam-jax convert sam_vit_b_01ec64.pth CKPT_DIR``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image

import sam_jax
from sam_jax.segment import read_image
from sam_jax.visualize import overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="sam_jax checkpoint directory")
    parser.add_argument("--image", required=True)
    parser.add_argument("--point", help="X,Y of a foreground point")
    parser.add_argument("--box", help="X1,Y1,X2,Y2")
    parser.add_argument("--output", default="out")
    args = parser.parse_args()

    model = sam_jax.load_sam(args.checkpoint)
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
