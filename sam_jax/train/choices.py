"""The named options of a training run, in one place and without importing JAX.

Each is a ``Literal`` type for the library's signatures and the tuple of its values for checks and
for ``sam-jax train``'s ``choices`` (read when the parser is built, so ``sam-jax --help`` stays fast).
"""

from __future__ import annotations

from typing import Literal, get_args

Trainable = Literal["decoder", "decoder+prompt", "all"]  # the parameters that get gradients
MaskLoss = Literal["dice_bce", "focal_dice"]  # MedSAM's dice + BCE, or SAM's 20 focal : 1 dice
Schedule = Literal["constant", "cosine"]  # learning rate after the linear warm-up
ComputeDtype = Literal["float32", "bfloat16"]

TRAINABLE: tuple[Trainable, ...] = get_args(Trainable)
MASK_LOSSES: tuple[MaskLoss, ...] = get_args(MaskLoss)
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)
