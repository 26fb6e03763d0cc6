"""The recipe of the bundled demo model, in one place.

``sam-jax train --preset demo`` and ``examples/train_demo.py`` train it; ``sam-jax evaluate``
and the tests score it on held-out scenes (another seed than the training stream).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.data.sources import SyntheticShapes
from sam_jax.data.synthetic import ShapesConfig, shapes_example
from sam_jax.train.loop import TrainConfig
from sam_jax.train.sampling import PromptConfig
from sam_jax.train.step import OptimizerConfig, StepConfig

DEMO_MODEL = "demo"  # the registry entry of sam_jax.models.sam.config
DEMO_SHAPES = ShapesConfig(size=128)
DEMO_TRAIN_SEED = 0
DEMO_EVAL_SEED = 1
DEMO_SAMPLE = (2, 1, 256)  # seed, index and size of examples/images/shapes.png
DEMO_SAMPLE_OBJECT = 0  # the dark pentagon: the README's box is its bounding box, (66, 14, 184, 138)
DEMO_TRAIN = TrainConfig(
    steps=8000,
    batch_size=16,
    max_objects=4,
    shuffle=False,  # an endless stream of fresh scenes
    trainable="all",
    optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.05),
    step=StepConfig(prompts=PromptConfig(box_prob=0.7)),
    seed=DEMO_TRAIN_SEED,
    log_every=100,
    checkpoint_every=1000,
    num_threads=8,
)


# The bundled model is the checkpoint at this step of DEMO_TRAIN (its device time ran out there; it
# already clears the bar): ``sam-jax train DIR --preset demo --until 3000 --export OUT`` reproduces it.
DEMO_SHIPPED_STEP = 3000


def demo_train_source() -> SyntheticShapes:
    """The endless training stream of the demo model."""
    return SyntheticShapes(DEMO_SHAPES, seed=DEMO_TRAIN_SEED)


def demo_eval_source(num_images: int) -> SyntheticShapes:
    """``num_images`` held-out scenes (a seed never used for training)."""
    return SyntheticShapes(DEMO_SHAPES, seed=DEMO_EVAL_SEED, length=num_images)


def demo_sample() -> dict[str, np.ndarray]:
    """The README's sample scene, drawn at twice the model's input size from a seed used neither for
    training nor for evaluation: ``image`` ``(256, 256, 3)`` uint8 and ``masks`` ``(K, 256, 256)``."""
    seed, index, size = DEMO_SAMPLE
    return shapes_example(seed, index, dataclasses.replace(DEMO_SHAPES, size=size))
