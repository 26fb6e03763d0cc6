"""``sam-jax export``: the exported programs and the model-free loader against the jitted
predictors, on the bundled demo model (SAM 1) and the tiny SAM 2 test config, at several image
sizes and aspect ratios from one export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sam_jax.assets import demo_checkpoint_dir
from sam_jax.build import load_sam, save_sam
from sam_jax.cli import main
from sam_jax.export.runtime import ExportedSam
from sam_jax.predictors.sam import SamPredictor
from sam_jax.predictors.sam2 import SAM2ImagePredictor

from conftest import max_abs

# Only the 4-slot decoders are exported here (export time); every prompt below needs 4 slots.
SLOTS = (4,)
SIZES = [(300, 451), (1024, 1024), (77, 500), (480, 640)]
# Encoder features and IoU match the jitted path to this; see DECODER_TOL for the logits.
TOL = 1e-6
# The decoder is exported with a symbolic prompt count; XLA compiles that program with different
# rounding from the jitted one (a static-shape export of the same function is bitwise equal).
# Measured max |diff| of logits (|logits| up to ~25): 1.6e-5. Open: issue 15, item 3.
DECODER_TOL = 3e-5


def _prompts(hw):
    h, w = hw
    pts = np.array([[w * 0.3, h * 0.6], [w * 0.55, h * 0.25]], np.float32)
    lab = np.array([1, 0], np.int32)
    box = np.array([w * 0.1, h * 0.15, w * 0.7, h * 0.8], np.float32)
    return pts, lab, box


def _image(hw, seed, gray=False):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, hw if gray else (*hw, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def demo():
    return load_sam(demo_checkpoint_dir())


def _export(checkpoint, out) -> None:
    """``sam-jax export`` in a subprocess: the shape-polymorphic trace hands symbolic sizes to
    functions annotated ``int``, which the test session's run-time annotation checks refuse."""
    cmd = [
        sys.executable,
        "-m",
        "sam_jax",
        "export",
        str(checkpoint),
        str(out),
        "--point-slots",
        ",".join(map(str, SLOTS)),
    ]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_export") / "export"
    _export(demo_checkpoint_dir(), out)
    return out


def test_manifest_describes_the_programs(demo_export):
    manifest = json.loads((demo_export / "manifest.json").read_text())
    assert manifest["family"] == "sam" and manifest["img_size"] == 128
    assert manifest["preprocessing"]["pixel_mean"] == [123.675, 116.28, 103.53]
    platforms = {e["name"]: e["platforms"] for e in manifest["encoders"]}
    assert platforms == {"encoder_cpu": ["cpu"], "encoder_accel": ["cuda", "tpu"]}
    assert all(d["platforms"] == ["cpu", "cuda", "tpu"] for d in manifest["decoders"])
    assert {d["inputs"][-1]["shape"] for d in manifest["decoders"]} == {"H W 0"}


@pytest.mark.parametrize("hw", SIZES)
def test_sam_export_matches_predictor(demo, demo_export, hw):
    gray = hw == (480, 640)
    image = _image(hw, sum(hw), gray=gray)
    pred, sam = SamPredictor(demo), ExportedSam.load(demo_export)
    pred.set_image(image)
    sam.set_image(image)
    assert max_abs(sam.features[0], pred.features) <= TOL
    pts, lab, box = _prompts(hw)
    low = pred.predict(pts, lab, multimask_output=False)[2]
    cases = [
        dict(point_coords=pts, point_labels=lab, multimask_output=True),
        dict(point_coords=pts, point_labels=lab, multimask_output=False),
        dict(point_coords=np.concatenate([pts, pts[:1] + 3]), point_labels=np.array([1, 0, 1]), box=box),
        dict(point_coords=pts, point_labels=lab, mask_input=low),
    ]
    for kw in cases:
        want = pred.predict(**kw, return_logits=True)
        got = sam.predict(**kw, return_logits=True)
        assert got[0].shape == (want[0].shape[0], *hw)
        assert max_abs(got[0], want[0]) <= DECODER_TOL, kw.keys()
        assert max_abs(got[1], want[1]) <= DECODER_TOL
        assert max_abs(got[2], want[2]) <= DECODER_TOL
        masks = sam.predict(**kw)[0]
        assert masks.dtype == bool and masks.shape == got[0].shape
        # Masks are the logits thresholded; pixels within rounding of the threshold may differ.
        assert np.array_equal(masks, got[0] > 0)


def test_sam2_export_matches_predictor(tmp_path):
    from test_sam2_predictor import TEST, _random_params

    from sam_jax.convert import sam2_rules

    model = sam2_rules.build_image_model(TEST, _random_params())
    save_sam(model, tmp_path / "ckpt")
    _export(tmp_path / "ckpt", tmp_path / "export")
    pred, sam = SAM2ImagePredictor(model), ExportedSam.load(tmp_path / "export")
    for hw in [(90, 140), (77, 500)]:
        image = _image(hw, 7)
        pred.set_image(image)
        sam.set_image(image)
        for name, f in zip(sam._feature_names(), sam.features, strict=True):
            assert max_abs(f, pred.features[name][0]) <= TOL, name
        pts, lab, box = _prompts(hw)
        for kw in [dict(point_coords=pts, point_labels=lab), dict(point_coords=pts[:1], point_labels=lab[:1], box=box)]:
            for mm in (True, False):
                want = pred.predict(**kw, multimask_output=mm, return_logits=True)
                got = sam.predict(**kw, multimask_output=mm, return_logits=True)
                for g, w in zip(got, want, strict=True):
                    assert max_abs(g, w) <= DECODER_TOL


def test_runtime_imports_no_model_code(demo_export):
    code = (
        "import sys\n"
        "from sam_jax.export.runtime import ExportedSam\n"
        "import numpy as np\n"
        f"sam = ExportedSam.load({str(demo_export)!r})\n"
        "sam.set_image(np.zeros((40, 60, 3), np.uint8))\n"
        "sam.predict(np.array([[10., 20.]]), np.array([1]))\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('flax', 'sam_jax.models', 'sam_jax.ops', "
        "'sam_jax.core.decode', 'sam_jax.core.image', 'sam_jax.predictors')))\n"
        "print(bad)\n"
    )
    # The decoder for one click needs 2 slots: not exported here, so the call must fail cleanly.
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "no decoder for 2 point slots" in run.stderr
    code = code.replace("sam.predict(np.array([[10., 20.]]), np.array([1]))\n", "")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout


def test_cli_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "sam-jax export: error:" in capsys.readouterr().err
    assert main(["export", str(demo_checkpoint_dir()), str(tmp_path / "o"), "--point-slots", "3"]) == 2
    assert "powers of two" in capsys.readouterr().err
