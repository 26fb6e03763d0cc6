"""``sam-jax export``: the exported programs and the model-free loader against the jitted
predictors, on the bundled demo model (SAM 1) and the tiny SAM 2 test config, at several image
sizes and aspect ratios and prompt counts from one export.

Every decoder program has static prompt and point-slot counts (the predictors' buckets), so XLA
compiles what the jitted path compiles: results are asserted bitwise equal (the issue's bar is
1e-6). Exports run in-process with few buckets (seconds); one test runs the command itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sam_jax.assets import demo_checkpoint_dir
from sam_jax.build import load_sam
from sam_jax.cli import main
from sam_jax.export import writer
from sam_jax.export.runtime import ExportedSam
from sam_jax.predictors.sam import SamPredictor
from sam_jax.predictors.sam2 import SAM2ImagePredictor

from conftest import max_abs

# Only 4 point slots are exported here (export time); every prompt below needs 4 slots. Prompt
# buckets 1, 2, 4: larger ones run on a CPU as chunks of 4, as the predictors' lax.map does.
SLOTS = (4,)
MAX_PROMPTS = 4
SIZES = [(300, 451), (1024, 1024), (77, 500), (480, 640)]


def _exact(got, want, what) -> None:
    """Bitwise equality (measured: 0.0 everywhere), with the max difference named on failure."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    assert np.array_equal(got, want), f"{what}: max |diff| {max_abs(got, want):.3g}"


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


@pytest.fixture(scope="module")
def demo_export(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_export") / "export"
    writer.export_model(demo, out, point_slots=SLOTS, max_prompts=MAX_PROMPTS)
    return out


def test_manifest_describes_the_programs(demo_export):
    manifest = json.loads((demo_export / "manifest.json").read_text())
    assert manifest["family"] == "sam" and manifest["img_size"] == 128
    assert manifest["preprocessing"]["pixel_mean"] == [123.675, 116.28, 103.53]
    platforms = {e["name"]: e["platforms"] for e in manifest["encoders"]}
    assert platforms == {"encoder_cpu": ["cpu"], "encoder_accel": ["cuda", "tpu"]}
    # multimask x prompt buckets 1, 2, 4 x box x mask input, each for every platform.
    assert len(manifest["decoders"]) == 2 * 3 * 2 * 2
    assert all(d["platforms"] == ["cpu", "cuda", "tpu"] for d in manifest["decoders"])
    assert {d["num_prompts"] for d in manifest["decoders"]} == {1, 2, 4}
    assert manifest["postprocess"]["platforms"] == ["cpu", "cuda", "tpu"]
    assert [i["shape"] for i in manifest["postprocess"]["inputs"]] == ["K 64 64", "H W 0"]
    assert manifest["cpu_prompt_chunk"] == 4
    d = next(d for d in manifest["decoders"] if d["num_prompts"] == 2 and d["box"] and not d["mask_input"])
    assert [(i["name"], i["shape"]) for i in d["inputs"][1:]] == [
        ("point_coords", "2 4 2"),
        ("point_labels", "2 4"),
        ("point_valid", "2 4"),
        ("boxes", "2 4"),
        ("box_valid", "2"),
    ]


def test_decoder_kinds_split_buckets_a_cpu_steps_through():
    kinds = writer.decoder_kinds("sam", (1, 2), 16, (True,))
    # Buckets 1, 2, 4 for all platforms; 8 and 16 for accelerators only (a CPU runs them as 4s).
    assert len(kinds) == 2 * 5 * 2 * 2
    assert {(k.num_prompts, k.target) for k in kinds} == {
        (1, "all"),
        (2, "all"),
        (4, "all"),
        (8, "accel"),
        (16, "accel"),
    }
    assert all(not k.box for k in writer.decoder_kinds("sam2", (1,), 2, (True, False)))
    with pytest.raises(ValueError, match="power of two"):
        writer.prompt_buckets(12)


@pytest.mark.parametrize("hw", SIZES)
def test_sam_export_matches_predictor(demo, demo_export, hw):
    gray = hw == (480, 640)
    image = _image(hw, sum(hw), gray=gray)
    pred, sam = SamPredictor(demo), ExportedSam.load(demo_export)
    pred.set_image(image)
    sam.set_image(image)
    _exact(sam.features[0], pred.features, "features")
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
        for name, g, w in zip(("logits", "iou", "low_res"), got, want, strict=True):
            _exact(g, w, f"{name} {sorted(kw)}")
        masks = sam.predict(**kw)[0]
        _exact(masks, pred.predict(**kw)[0], "masks")


def test_sam_export_prompt_buckets(demo, demo_export):
    """``predict_batch`` with 3 (padded to 4) and 6 (padded to 8: two calls of the 4-prompt program
    on a CPU) prompts, uneven point counts, boxes and mask inputs."""
    hw = (300, 451)
    image = _image(hw, 3)
    pred, sam = SamPredictor(demo), ExportedSam.load(demo_export)
    pred.set_image(image)
    sam.set_image(image)
    rng = np.random.default_rng(0)
    low = None
    for n, extra in [(3, "boxes"), (6, None), (6, "mask_input")]:
        pts = [rng.uniform(0, 300, (k, 2)).astype(np.float32) for k in rng.integers(1, 4, n)]
        lab = [rng.integers(0, 2, len(p)).astype(np.int32) for p in pts]
        boxes = np.sort(rng.uniform(0, 300, (n, 2, 2)), axis=1).reshape(n, 4).astype(np.float32)
        kw = dict(point_coords=pts, point_labels=lab)
        if extra is not None:
            kw[extra] = boxes if extra == "boxes" else low
        want = pred.predict_batch(**kw, return_logits=True)
        got = sam.predict_batch(**kw, return_logits=True)
        assert got[0].shape == (n, 3, *hw)
        for name, g, w in zip(("logits", "iou", "low_res"), got, want, strict=True):
            _exact(g, w, f"{name} n={n} {sorted(kw)}")
        low = want[2][:, :1]
    with pytest.raises(ValueError, match="same batch size"):
        sam.predict_batch(boxes=boxes[:3], mask_input=low)


def test_sam2_export_matches_predictor(tmp_path):
    from test_sam2_predictor import TEST, _random_params

    from sam_jax.convert import sam2_rules

    model = sam2_rules.build_image_model(TEST, _random_params())
    writer.export_model(model, tmp_path / "export", point_slots=SLOTS, max_prompts=2)
    pred, sam = SAM2ImagePredictor(model), ExportedSam.load(tmp_path / "export")
    for hw, cases in [((90, 140), "all"), ((77, 500), "one")]:
        image = _image(hw, 7)
        pred.set_image(image)
        sam.set_image(image)
        for name, f in zip(sam._feature_names(), sam.features, strict=True):
            _exact(f, pred.features[name][0], name)
        pts, lab, box = _prompts(hw)
        low = pred.predict(pts, lab, multimask_output=True)[2][:1]
        kws = [
            dict(point_coords=pts, point_labels=lab, multimask_output=True),
            dict(point_coords=pts, point_labels=lab, multimask_output=False),
            dict(point_coords=pts[:1], point_labels=lab[:1], box=box),
            dict(point_coords=pts, point_labels=lab, mask_input=low),
            # Two objects (prompt bucket 2).
            dict(point_coords=np.stack([pts[:1], pts[1:]]), point_labels=lab[:, None], box=np.stack([box, box])),
        ]
        for kw in kws if cases == "all" else kws[:1]:
            want = pred.predict(**kw, return_logits=True)
            got = sam.predict(**kw, return_logits=True)
            for name, g, w in zip(("logits", "iou", "low_res"), got, want, strict=True):
                _exact(g, w, f"{name} {sorted(kw)}")
            _exact(sam.predict(**kw)[0], pred.predict(**kw)[0], "masks")


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


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["export", str(demo_checkpoint_dir()), str(out), "--point-slots", "2", "--max-prompts", "1"]
    assert main(argv) == 0
    assert "2 encoder + 8 decoder programs (sam)" in capsys.readouterr().out
    sam = ExportedSam.load(out)
    sam.set_image(_image((40, 60), 1))
    masks, iou, low_res = sam.predict(np.array([[10.0, 20.0]]), np.array([1]))
    assert masks.shape == (3, 40, 60) and masks.dtype == bool and iou.shape == (3,) and low_res.shape == (3, 64, 64)
    assert main(argv) == 2
    assert "already holds an export" in capsys.readouterr().err


def test_cli_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "sam-jax export: error:" in capsys.readouterr().err
    assert main(["export", str(demo_checkpoint_dir()), str(tmp_path / "o"), "--point-slots", "3"]) == 2
    assert "powers of two" in capsys.readouterr().err
    assert main(["export", str(demo_checkpoint_dir()), str(tmp_path / "o"), "--max-prompts", "6"]) == 2
    assert "power of two" in capsys.readouterr().err
