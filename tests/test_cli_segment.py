"""``sam-jax segment``: files written, equal to the predictor's output, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax import save_sam
from sam_jax.cli import main
from sam_jax.io import read_image
from sam_jax.predictors.sam import SamPredictor

from conftest import fixture_model

IMAGE = Path(__file__).parents[1] / "examples" / "images" / "chelsea.jpg"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_sam(fixture_model("tiny"), path)
    return path


def test_points_and_box_write_masks_scores_and_overlay(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(IMAGE), "--checkpoint", str(tiny_dir), "--point", "200,100", "--point", "20,30,0"]
    assert main([*argv, "--box", "50,20,400,280", "--output", str(out)]) == 0
    summary = json.loads((out / "scores.json").read_text())
    assert [m["file"] for m in summary["masks"]] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    predictor = SamPredictor(fixture_model("tiny"))
    predictor.set_image(read_image(IMAGE))
    masks, scores, _ = predictor.predict(
        np.array([[200.0, 100], [20, 30]]), np.array([1, 0]), np.array([50.0, 20, 400, 280])
    )
    for i, m in enumerate(summary["masks"]):
        png = np.asarray(Image.open(out / m["file"]))
        np.testing.assert_array_equal(png > 0, masks[i])
        assert m["score"] == pytest.approx(float(scores[i]), abs=1e-6)
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == (300, 451, 3)
    assert "overlay.png" in capsys.readouterr().out


def test_several_boxes_give_one_prediction_each(tiny_dir, tmp_path):
    argv = ["segment", str(IMAGE), "--checkpoint", str(tiny_dir), "--box", "0,0,100,100", "--box", "50,60,300,200"]
    assert main([*argv, "--single-mask", "--output", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert [m["file"] for m in summary["masks"]] == ["mask_0_0.png", "mask_1_0.png"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "1,2,3"], "box must be X1,Y1,X2,Y2"),
        (["--point", "1,nan"], "point must be"),
        (["--box", "10,10,5,20"], "x2 >= x1"),
        (["--point", "1,2", "--box", "0,0,9,9", "--box", "1,1,5,5"], "one box only"),
        ([], "at least one point or box"),
    ],
)
def test_bad_prompts_exit_2_with_a_clear_message(tiny_dir, tmp_path, capsys, extra, message):
    argv = ["segment", str(IMAGE), "--checkpoint", str(tiny_dir), "--output", str(tmp_path), *extra]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--point", "452,10"], "point 452,10 is outside the image, which is 451 x 300 pixels"),
        (["--point", "10,-1,0"], "point 10,-1 is outside the image, which is 451 x 300 pixels"),
        (["--box", "500,10,600,90"], "box 500,10,600,90 lies entirely outside the image, which is 451 x 300 pixels"),
    ],
)
def test_prompts_outside_the_image_are_refused(tiny_dir, tmp_path, capsys, extra, message):
    argv = ["segment", str(IMAGE), "--checkpoint", str(tiny_dir), "--output", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"sam-jax segment: error: {message} (W x H)"]
    assert not (tmp_path / "out").exists()
    # On the edge, or a box partly inside: accepted.
    argv = ["segment", str(IMAGE), "--checkpoint", str(tiny_dir), "--output", str(tmp_path / "ok")]
    assert main([*argv, "--point", "451,300", "--box", "400,250,600,400"]) == 0


def test_demo_model_on_a_photo_prints_a_one_line_hint(tmp_path, capsys):
    assert main(["segment", str(IMAGE), "--box", "50,20,400,280", "--output", str(tmp_path)]) == 0
    hint = capsys.readouterr().err.splitlines()
    assert len(hint) == 1 and "demo model" in hint[0] and "synthetic shapes" in hint[0] and "--checkpoint" in hint[0]


def test_unreadable_image_and_missing_checkpoint(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert (
        main(["segment", str(bad), "--checkpoint", str(tiny_dir), "--box", "0,0,5,5", "--output", str(tmp_path)]) == 2
    )
    assert "cannot read image" in capsys.readouterr().err
    assert (
        main(["segment", str(IMAGE), "--checkpoint", str(tmp_path), "--box", "0,0,5,5", "--output", str(tmp_path)]) == 2
    )
    assert "not a sam_jax checkpoint" in capsys.readouterr().err


def test_readme_main_command_runs_on_the_bundled_demo_model(tmp_path, monkeypatch, capsys):
    """The README's quick-start command, taken from the README itself, with no checkpoint: the bundled
    demo model segments the bundled sample image, and the best mask is the boxed shape."""
    from sam_jax.train import presets

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "sam-jax segment examples/" in x and "&&" in x)
    argv = line.split(".venv/bin/sam-jax ", 1)[1].split()
    assert "--checkpoint" not in argv
    monkeypatch.chdir(Path(__file__).parents[1])
    argv[argv.index("--output") + 1] = str(tmp_path / "out")
    assert main(argv) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    best = max(scores["masks"], key=lambda m: m["score"])
    mask = np.asarray(Image.open(tmp_path / "out" / best["file"])) > 0
    truth = presets.demo_sample()["masks"][presets.DEMO_SAMPLE_OBJECT]
    assert (mask & truth).sum() / (mask | truth).sum() >= 0.85
    assert (tmp_path / "out" / "overlay.png").is_file()
    assert capsys.readouterr().err == ""  # the demo model on its own sample: no "real photos need..." hint
