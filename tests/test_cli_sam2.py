"""``sam-jax segment`` and ``sam-jax amg`` with a SAM 2 checkpoint: the family's predictor and
generator are picked from the checkpoint, and the files equal their output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, build_sam, load_sam, save_sam
from sam_jax.cli import main
from sam_jax.io import read_image

IMAGE = Path(__file__).parents[1] / "examples" / "images" / "chelsea.jpg"


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sam2_test"
    save_sam(build_sam("sam2_test", seed=3), path)
    return path


def test_segment_uses_the_sam2_predictor(sam2_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", str(IMAGE), "--checkpoint", str(sam2_dir), "--point", "200,100", "--point", "20,30,0"]
    assert main([*argv, "--box", "50,20,400,280", "--output", str(out)]) == 0
    summary = json.loads((out / "scores.json").read_text())
    assert summary["model"] == "sam2_test"
    predictor = SAM2ImagePredictor(load_sam(sam2_dir))
    predictor.set_image(read_image(IMAGE))
    masks, scores, _ = predictor.predict(
        np.array([[200.0, 100], [20, 30]]), np.array([1, 0]), np.array([50.0, 20, 400, 280])
    )
    assert [m["file"] for m in summary["masks"]] == [f"mask_{j}.png" for j in range(len(masks))]
    for j, m in enumerate(summary["masks"]):
        np.testing.assert_array_equal(np.asarray(Image.open(out / m["file"])) > 0, masks[j] > 0)
        assert m["score"] == pytest.approx(float(scores[j]), abs=1e-6)


def test_segment_several_boxes_with_sam2(sam2_dir, tmp_path):
    argv = ["segment", str(IMAGE), "--checkpoint", str(sam2_dir), "--box", "0,0,100,100", "--box", "50,60,300,200"]
    assert main([*argv, "--single-mask", "--output", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert [m["file"] for m in summary["masks"]] == ["mask_0_0.png", "mask_1_0.png"]
    predictor = SAM2ImagePredictor(load_sam(sam2_dir))
    predictor.set_image(read_image(IMAGE))
    masks, _, _ = predictor.predict(box=np.array([[0.0, 0, 100, 100], [50, 60, 300, 200]]), multimask_output=False)
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"mask_{i}_0.png")) > 0, masks[i, 0] > 0)


def test_amg_uses_the_sam2_generator(sam2_dir, tmp_path):
    settings = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    out = tmp_path / "out"
    assert main(["amg", "--input", str(IMAGE), "--output", str(out), "--checkpoint", str(sam2_dir), *settings]) == 0
    with open(out / "chelsea" / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    generator = SAM2AutomaticMaskGenerator(
        load_sam(sam2_dir), points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = generator.generate(read_image(IMAGE))
    assert len(rows) == len(records) > 0
    assert [int(r["area"]) for r in rows] == [r["area"] for r in records]
