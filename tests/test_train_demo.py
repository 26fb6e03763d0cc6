"""The bundled demo model: present, small, loadable without a registry entry, and still accurate."""

from __future__ import annotations

import argparse
import json

import numpy as np

from sam_jax.assets import demo_checkpoint_dir
from sam_jax.build import load_sam
from sam_jax.models.sam.config import get_config
from sam_jax.predictors.sam import SamPredictor
from sam_jax.train import cli as train_cli
from sam_jax.train import presets
from sam_jax.train.evaluate import evaluate, object_prompts

EVAL_IMAGES = 8  # the `sam-jax evaluate` call below uses the same shapes, so one compile serves both


def test_demo_model_is_small_and_has_the_sam_structure():
    directory = demo_checkpoint_dir()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MiB"
    cfg = load_sam(directory).config
    assert cfg == get_config(presets.DEMO_MODEL)  # the registry entry `sam-jax train --preset demo` builds
    enc = cfg.image_encoder
    assert cfg.name == presets.DEMO_MODEL and enc.img_size == presets.DEMO_SHAPES.size
    assert enc.window_size > 0 and 0 < len(enc.global_attn_indexes) < enc.depth  # windowed and global blocks
    assert cfg.mask_decoder.num_multimask_outputs == 3


def test_demo_model_segments_held_out_shapes():
    result = evaluate(load_sam(demo_checkpoint_dir()), presets.demo_eval_source(EVAL_IMAGES), batch_size=8)
    assert result.num_objects >= 2 * EVAL_IMAGES
    assert result.box_miou >= 0.8, result
    assert result.box_best_miou >= 0.8, result
    assert result.point_miou >= 0.6, result


def test_demo_model_segments_the_readme_image_from_its_box():
    sample = presets.demo_sample()
    boxes, _ = object_prompts(sample["masks"])
    box = boxes[presets.DEMO_SAMPLE_OBJECT]
    np.testing.assert_array_equal(box, [66, 14, 184, 138])  # the box the README gives
    predictor = SamPredictor(load_sam(demo_checkpoint_dir()))
    predictor.set_image(sample["image"])
    masks, scores, _ = predictor.predict(box=box)  # as `sam-jax segment` calls it: three masks
    best, truth = masks[np.argmax(scores)], sample["masks"][presets.DEMO_SAMPLE_OBJECT]
    assert (best & truth).sum() / (best | truth).sum() >= 0.85


def test_evaluate_command_prints_the_scores(capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_evaluate_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--num-images", str(EVAL_IMAGES)])
    assert args.run(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"box_miou", "box_best_miou", "point_miou", "num_objects"} and out["box_miou"] >= 0.8
