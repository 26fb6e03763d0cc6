"""``sam-jax amg`` over a folder: outputs, unreadable files, resume, PNG mode, and a 2-process
``jax.distributed`` run whose union of outputs equals a single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from sam_jax.amg import cli
from sam_jax.amg.dataset import Job, list_jobs, metadata_row, shard
from sam_jax.amg.rle import coco_rle_to_mask
from sam_jax.build import save_sam

from conftest import fixture_model

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
SETTINGS += ["--box-nms-thresh", "0.99", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_sam(fixture_model("tiny"), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Five 128 x 128 photos (one size: one compiled program), one in a subfolder, and a file
    that is not an image."""
    root = tmp_path_factory.mktemp("images")
    photos = {
        "astronaut.png": skimage.data.astronaut()[::4, ::4],
        "cat.jpg": skimage.data.chelsea()[:256:2, 100:356:2],
        "coffee.png": skimage.data.coffee()[100:356:2, 200:456:2],
        "rocket.png": skimage.data.rocket()[:256:2, 100:356:2],
        "sub/astronaut_flipped.png": skimage.data.astronaut()[::4, ::-4],
    }
    for name, rgb in photos.items():
        (root / name).parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(root / name), np.ascontiguousarray(rgb[..., ::-1]))
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def run_cli(*args: str) -> int:
    return cli.main([*args, *SETTINGS])


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_list_jobs_names_and_shards(tmp_path):
    for name in ("a.jpg", "a.png", "b.png", "sub/c.png", ".hidden.png", "out/old.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    out = tmp_path / "out"
    jobs = list_jobs(tmp_path, out)
    assert [(j.source.relative_to(tmp_path).as_posix(), j.base.relative_to(out).as_posix()) for j in jobs] == [
        ("a.jpg", "a.jpg"),  # stems collide: keep the extension
        ("a.png", "a.png"),
        ("b.png", "b"),
        ("sub/c.png", "sub/c"),
    ]
    assert jobs[2].output(rle=True).name == "b.json" and jobs[2].output(rle=False).name == "b"
    parts = [shard(jobs, i, 3) for i in range(3)]
    assert sorted(j.source for p in parts for j in p) == sorted(j.source for j in jobs)
    with pytest.raises(ValueError, match="process_index"):
        shard(jobs, 3, 3)
    assert list_jobs(tmp_path / "b.png", out) == [Job(tmp_path / "b.png", out / "b")]


def test_rle_run_skips_unreadable_and_resumes(images, checkpoint, tmp_path, caplog):
    out = tmp_path / "out"
    assert run_cli("--input", str(images), "--output", str(out), "--checkpoint", str(checkpoint), "--convert-to-rle",
                   "--overlay") == 1  # fmt: skip
    assert "could not read" in caplog.text and "broken.jpg" in caplog.text
    assert f"written 5, already done 0, unreadable 1: {images / 'broken.jpg'}" in caplog.text
    files = outputs(out)
    names = ["astronaut", "cat", "coffee", "rocket", "sub/astronaut_flipped"]
    assert sorted(files) == sorted([f"{n}.json" for n in names] + [f"{n}.overlay.png" for n in names])
    records = json.loads(files["cat.json"])
    assert records and set(records[0]) == {
        "segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box",
    }  # fmt: skip
    assert coco_rle_to_mask(records[0]["segmentation"]).sum() == records[0]["area"]
    assert cv2.imread(str(out / "cat.overlay.png")).shape == (128, 128, 3)

    # Restart: nothing is redone; a lost output and a leftover partial file are handled.
    stamps = {p: (out / p).stat().st_mtime_ns for p in files}
    (out / "coffee.json").unlink()
    (out / "coffee.json.partial").write_text("[")
    run_cli("--input", str(images), "--output", str(out), "--checkpoint", str(checkpoint), "--convert-to-rle")
    again = outputs(out)
    assert again == files
    changed = [p for p in files if (out / p).stat().st_mtime_ns != stamps.get(p)]
    assert changed == ["coffee.json"]


def test_png_folder_mode(images, checkpoint, tmp_path):
    out = tmp_path / "png"
    assert run_cli("--input", str(images / "cat.jpg"), "--output", str(out), "--checkpoint", str(checkpoint)) == 0
    rle_out = tmp_path / "rle"
    run_cli("--input", str(images / "cat.jpg"), "--output", str(rle_out), "--checkpoint", str(checkpoint),
            "--convert-to-rle")  # fmt: skip
    records = json.loads((rle_out / "cat.json").read_text())
    lines = (out / "cat" / "metadata.csv").read_text().split("\n")
    assert lines[0].startswith("id,area,bbox_x0") and lines[1:] == [metadata_row(i, r) for i, r in enumerate(records)]
    for i, rec in enumerate(records):
        png = cv2.imread(str(out / "cat" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(png > 0, coco_rle_to_mask(rec["segmentation"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(images, checkpoint, tmp_path):
    single = tmp_path / "single"
    run_cli("--input", str(images), "--output", str(single), "--checkpoint", str(checkpoint), "--convert-to-rle")
    multi = tmp_path / "multi"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    address = f"localhost:{_free_port()}"
    cmd = [sys.executable, "-m", "sam_jax.amg.cli", "--input", str(images), "--output", str(multi)]
    cmd += ["--checkpoint", str(checkpoint), "--convert-to-rle", "--coordinator-address", address]
    cmd += ["--num-processes", "2", *(s for s in SETTINGS if s != "--quiet")]  # --quiet hides the info lines
    procs = [
        subprocess.Popen([*cmd, "--process-id", str(i)], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 1] or [p.returncode for p in procs] == [1, 0], errs
    assert "process 0/2: 3 images" in errs[0] and "process 1/2: 3 images" in errs[1], errs
    assert outputs(multi) == outputs(single)


def test_without_checkpoint_the_demo_model_finds_the_sample_shapes(tmp_path):
    """No --checkpoint: the bundled demo model auto-masks the bundled sample image, and its objects
    are among the masks (each matched at IoU >= 0.8)."""
    from sam_jax.train import presets

    sample = Path(__file__).parents[1] / "examples" / "images" / "shapes.png"
    assert run_cli("--input", str(sample), "--output", str(tmp_path), "--convert-to-rle", "--quiet") == 0
    records = json.loads((tmp_path / "shapes.json").read_text())
    found = np.stack([coco_rle_to_mask(r["segmentation"]) for r in records])
    for truth in presets.demo_sample()["masks"]:
        ious = (found & truth).sum((1, 2)) / (found | truth).sum((1, 2))
        assert ious.max() >= 0.8, ious


def test_truncated_jpeg_is_skipped_reported_and_not_written(checkpoint, tmp_path, caplog):
    """A JPEG cut in half (an interrupted copy) is unreadable, not an image grey below the cut: it is
    logged, named in the summary, counted as unreadable (status 1) and gets no output."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.ascontiguousarray(skimage.data.chelsea()[:256:2, 100:356:2, ::-1])
    assert cv2.imwrite(str(folder / "whole.jpg"), photo)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    argv = ["--input", str(folder), "--output", str(out), "--checkpoint", str(checkpoint), "--convert-to-rle"]
    assert run_cli(*argv) == 1
    assert f"written 1, already done 0, unreadable 1: {folder / 'cut.jpg'}" in caplog.text
    assert sorted(outputs(out)) == ["whole.json"]


def test_amg_folder_example_exits_1_on_unreadable_input_like_the_command(tmp_path):
    """examples/amg_folder.py and ``sam-jax amg`` agree: unreadable inputs make the run fail (status 1)
    after every other image was processed, with the same summary line."""
    folder = tmp_path / "in"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "small.png"), np.ascontiguousarray(skimage.data.coffee()[::8, ::8, ::-1]))
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "examples" / "amg_folder.py"), "--input", str(folder), "--output", str(out)]
    result = subprocess.run([*command, "--points-per-side", "4"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[-1] == f"written 1, already done 0, unreadable 1: {folder / 'broken.jpg'}"
    assert sorted(outputs(out)) == ["small.json", "small.overlay.png"]
    bad = subprocess.run([*command, "--points-per-side", "0"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.splitlines() == ["error: points_per_side must be an integer >= 1, got 0"]


def _sample_shapes() -> np.ndarray:
    """The visible part of every shape of examples/images/shapes.png, the mostly hidden light
    rectangle included (the training data gives it no mask): ``(4, 256, 256)`` bool."""
    import dataclasses

    from sam_jax.data.synthetic import render_shapes
    from sam_jax.train import presets

    seed, index, size = presets.DEMO_SAMPLE
    cfg = dataclasses.replace(presets.DEMO_SHAPES, size=size, min_visible=0.0, min_area=0.0)
    image, masks = render_shapes(np.random.default_rng([seed, index]), cfg)
    assert np.array_equal(image, presets.demo_sample()["image"])  # the same scene, drawn alike
    return masks


def test_readme_amg_command_finds_the_four_sample_shapes_once_each(tmp_path, monkeypatch):
    """The README's first AMG command, taken from the README: the demo model's masks are the sample's
    four shapes, one mask each (IoU >= 0.8), with no duplicates."""
    readme = (ROOT / "README.md").read_text().split("\n")
    start = next(i for i, x in enumerate(readme) if x.startswith("sam-jax amg --input examples/images/shapes.png"))
    command = readme[start].rstrip("\\") + " " + readme[start + 1] if readme[start].endswith("\\") else readme[start]
    argv = command.split()[2:]
    assert "--checkpoint" not in argv
    monkeypatch.chdir(ROOT)
    argv[argv.index("--output") + 1] = str(tmp_path / "amg")
    assert cli.main([*argv, "--quiet"]) == 0
    pngs = sorted((tmp_path / "amg" / "shapes").glob("*.png"))
    found = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0 for p in pngs])
    truth = _sample_shapes()
    ious = (found[:, None] & truth[None]).sum((2, 3)) / (found[:, None] | truth[None]).sum((2, 3))
    assert len(found) == 4 and sorted(ious.argmax(1)) == [0, 1, 2, 3], np.round(ious, 3)
    assert (ious.max(1) >= 0.8).all(), np.round(ious, 3)
    assert (tmp_path / "amg" / "shapes.overlay.png").is_file()
