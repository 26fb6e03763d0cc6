"""Fine-tune the mask decoder of a converted SAM checkpoint on a folder of images and masks (MedSAM-style).

    sam-jax convert sam_vit_b_01ec64.pth checkpoints/vit_b
    python examples/finetune_decoder.py checkpoints/vit_b data/train out/finetune --val data/val

``data/train`` holds ``images/NAME.png`` and ``masks/NAME.png`` (0 background, every other value one
object; see :class:`sam_jax.data.sources.MaskFolder`). The image encoder stays frozen, so every
image is embedded once and the decoder trains on the cached embeddings (MedSAM's recipe: box
prompts, dice + cross-entropy on the 256 x 256 low-resolution masks). Interrupted runs resume
when started again with the same arguments. The same run from the command line::

    sam-jax train out/finetune --checkpoint checkpoints/vit_b --folder data/train --trainable decoder \\
        --cache-embeddings --mask-size 256 --box-prob 1 --lr 1e-4 --warmup 100 --steps 2000 \\
        --export out/finetune/model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from sam_jax import load_sam, save_sam
from sam_jax.data.sources import MaskFolder
from sam_jax.train.evaluate import evaluate
from sam_jax.train.loop import TrainConfig, train
from sam_jax.train.sampling import PromptConfig
from sam_jax.train.step import OptimizerConfig, StepConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="sam_jax checkpoint directory (from sam-jax convert)")
    parser.add_argument("data", type=Path, help="training folder: images/ and masks/")
    parser.add_argument("workdir", type=Path, help="checkpoints, metrics.jsonl and the exported model/")
    parser.add_argument("--val", type=Path, help="held-out folder to score before and after (default: none)")
    parser.add_argument("--steps", type=int, default=2000, help="batches to train on (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate, AdamW (default: %(default)s)")
    args = parser.parse_args()

    model = load_sam(args.checkpoint)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        max_objects=4,
        mask_size=model.config.prompt_encoder.mask_input_size,  # loss on the low-res masks
        trainable="decoder",
        cache_embeddings=True,
        optimizer=OptimizerConfig(learning_rate=args.lr, warmup_steps=min(100, args.steps // 10)),
        step=StepConfig(prompts=PromptConfig(box_prob=1.0), mask_loss="dice_bce"),
    )
    val = MaskFolder(args.val) if args.val else None
    if val is not None:
        print("before:", json.dumps(dataclasses.asdict(evaluate(model, val))))
    model, _ = train(model, MaskFolder(args.data), cfg, args.workdir)
    save_sam(model, args.workdir / "model", force=True)
    if val is not None:
        print("after:", json.dumps(dataclasses.asdict(evaluate(model, val))))
    print(f"wrote {args.workdir / 'model'}")


if __name__ == "__main__":
    main()
