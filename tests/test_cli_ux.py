"""What a new user meets on the command line: one-line errors for bad AMG settings, defaults in every
``--help``, a clean exit (status 130, one line) on Ctrl-C, and progress output when stderr is a log."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax.amg.cli import AMG_SETTINGS
from sam_jax.amg.crops import build_all_layer_point_grids
from sam_jax.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "images" / "shapes.png"


def _single_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- bad AMG settings: one line, status 2 ------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--points-per-side", "0", "points_per_side must be an integer >= 1, got 0"),
        ("--points-per-batch", "0", "points_per_batch must be an integer >= 1, got 0"),
        ("--pred-iou-thresh", "1.5", "pred_iou_thresh must be in [0, 1], got 1.5"),
        ("--stability-score-thresh", "-0.1", "stability_score_thresh must be in [0, 1], got -0.1"),
        ("--stability-score-offset", "-1", "stability_score_offset must be a number >= 0, got -1.0"),
        ("--box-nms-thresh", "2", "box_nms_thresh must be in [0, 1], got 2.0"),
        ("--crop-n-layers", "-1", "crop_n_layers must be an integer >= 0, got -1"),
        ("--crop-nms-thresh", "nan", "crop_nms_thresh must be in [0, 1], got nan"),
        ("--crop-overlap-ratio", "1", "crop_overlap_ratio must be in [0, 1), got 1.0"),
        ("--crop-n-points-downscale-factor", "0", "crop_n_points_downscale_factor must be an integer >= 1, got 0"),
        ("--min-mask-region-area", "-5", "min_mask_region_area must be an integer >= 0, got -5"),
        ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ],
)
def test_bad_amg_settings_are_one_line_errors(flag, value, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["amg", "--input", str(SAMPLE), "--output", str(out), "--quiet", flag, value]) == 2
    assert _single_line(capsys.readouterr().err) == f"sam-jax amg: error: {message}"
    assert not out.exists()  # refused before anything was written


def test_point_grids_need_a_point_on_every_crop_layer():
    with pytest.raises(ValueError, match=r"points_per_side 4 leaves no points on crop layer 3 .* must be >= 8"):
        build_all_layer_point_grids(4, 3, 2)
    assert [len(g) for g in build_all_layer_point_grids(8, 3, 2)] == [64, 16, 4, 1]


def test_amg_help_defaults_are_the_generators():
    from sam_jax.amg.generator import SamAutomaticMaskGenerator

    signature = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    assert {name: default for name, (_, default, _) in AMG_SETTINGS.items()} == {
        name: signature[name].default for name in AMG_SETTINGS
    }


# --- --help shows the defaults -------------------------------------------------------------------


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_every_subcommand_help_shows_defaults(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {
        "convert",
        "segment",
        "amg",
        "train",
        "evaluate",
        "annotate",
        "annotate-export",
        "export",
        "track",
    }
    for command in commands:
        assert "(default: " in _help(command, capsys=capsys), command
    amg = _help("amg", capsys=capsys)
    for text in ("--points-per-side POINTS_PER_SIDE", "(default: 32)", "(default: 0.88)", "(default: 0.3413)"):
        assert text in amg
    assert "Exit status: 0 when every input image" in amg and "unreadable K: PATHS" in amg
    assert "(default: None)" not in amg and "(default: False)" not in amg
    assert "(default: 200)" in _help("evaluate", capsys=capsys)


def test_train_help_defaults_are_the_librarys(capsys):
    from sam_jax.train.loop import TrainConfig

    cfg = TrainConfig()
    text = _help("train", capsys=capsys)
    for flag, value in {
        "--steps": cfg.steps,
        "--max-objects": cfg.max_objects,
        "--keep": cfg.keep_checkpoints,
        "--threads": cfg.num_threads,
        "--lr": cfg.optimizer.learning_rate,
        "--schedule": cfg.optimizer.schedule,
        "--weight-decay": cfg.optimizer.weight_decay,
        "--grad-clip": cfg.optimizer.grad_clip,
        "--loss": cfg.step.mask_loss,
        "--box-prob": cfg.step.prompts.box_prob,
        "--max-points": cfg.step.prompts.max_points,
    }.items():
        shown = text.split(f" {flag} ", 1)[1].split("(default: ", 1)[1].split(")")[0].split(";")[0]
        assert (float(shown) == value) if isinstance(value, float) else (shown == str(value)), (flag, shown)


# --- Ctrl-C ------------------------------------------------------------------------------------


def _sam_jax(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "sam_jax", *args], env=env, cwd=ROOT, text=True, stderr=subprocess.PIPE, **kwargs
    )


def test_ctrl_c_during_amg_exits_130_with_one_line_and_a_rerun_resumes(tmp_path):
    """SIGINT once the first output exists: status 130, one line on stderr saying how many images were
    written, no traceback; the same command again writes the rest and only the rest."""
    sample = np.asarray(Image.open(SAMPLE))
    images = tmp_path / "images"
    images.mkdir()
    # Enough images that the run cannot finish between the first output and the signal (60 once did,
    # on a warm cache).
    n = 240
    for i in range(n):  # 64 x 64 crops of the sample: one size, one compiled program
        y, x = divmod(i * 37 % 192, 16)
        Image.fromarray(sample[y * 8 : y * 8 + 64, x * 8 : x * 8 + 64]).save(images / f"{i:02d}.png")
    out = tmp_path / "out"
    command = ["amg", "--input", str(images), "--output", str(out), "--convert-to-rle", "--quiet"]
    command += ["--points-per-side", "12"]
    proc = _sam_jax(*command)
    deadline = time.monotonic() + 240
    while not (out.exists() and any(out.glob("*.json"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    line = _single_line(stderr)
    done = len(list(out.glob("*.json")))
    assert 1 <= done < n, f"interrupt came too late to test: {done} of {n} done"
    assert line == (
        f"sam-jax amg: interrupted: {done} images written, 0 already done, {n - done} not done; "
        "run the same command again to resume"
    )
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}

    rerun = _sam_jax(*command)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert len(list(out.glob("*.json"))) == n and not list(out.glob("*.partial"))
    assert all(out.joinpath(name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("argv", "target", "message"),
    [
        (["segment", str(SAMPLE), "--box", "1,1,9,9", "--output", "OUT"], "sam_jax.segment.segment_to_files",
         "run it again"),
        (["evaluate", "--num-images", "2"], "sam_jax.train.evaluate.evaluate", "no result; run it again"),
        (["convert", "in.pth", "OUT"], "sam_jax.convert.command.convert_checkpoint", "run the command again"),
    ],
)  # fmt: skip
def test_ctrl_c_in_any_command_is_one_line_with_status_130(argv, target, message, monkeypatch, tmp_path, capsys):
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, _interrupt)
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 130
    line = _single_line(capsys.readouterr().err)
    assert line.startswith(f"sam-jax {argv[0]}: interrupted: ") and message in line


def test_ctrl_c_during_train_names_the_checkpoint_a_rerun_resumes_from(monkeypatch, tmp_path, capsys):
    from sam_jax.train import loop

    def interrupted_train(model, source, cfg, workdir, **kwargs):
        (Path(workdir) / loop.CHECKPOINT_DIR / "1000").mkdir(parents=True)
        (Path(workdir) / loop.CHECKPOINT_DIR / "2000.orbax-checkpoint-tmp-1").mkdir()  # unfinished
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted_train)
    assert main(["train", str(tmp_path / "run"), "--preset", "demo"]) == 130
    assert _single_line(capsys.readouterr().err) == (
        "sam-jax train: interrupted: the last checkpoint is at batch 1000; run the same command again to resume from it"
    )
    monkeypatch.setattr(loop, "train", _interrupt)
    assert main(["train", str(tmp_path / "new"), "--preset", "demo"]) == 130
    assert "no checkpoint was saved yet" in _single_line(capsys.readouterr().err)


# --- progress on non-terminals -----------------------------------------------------------------


def test_train_and_evaluate_show_progress_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """capsys's stderr is not a terminal, like a log file or CI: embedding, training and evaluating
    each show their progress there (they used to print nothing)."""
    from sam_jax.assets import demo_checkpoint_dir
    from sam_jax.build import load_sam
    from sam_jax.data.synthetic import shapes_example
    from sam_jax.train import presets
    from sam_jax.train.evaluate import evaluate
    from sam_jax.train.loop import TrainConfig, train

    model = load_sam(demo_checkpoint_dir())
    data = [shapes_example(5, i, presets.DEMO_SHAPES) for i in range(2)]
    cfg = TrainConfig(steps=1, batch_size=2, max_objects=2, trainable="decoder", cache_embeddings=True, num_threads=1)
    train(model, data, cfg, tmp_path)
    err = capsys.readouterr().err
    assert "embedding: 100%" in err and "2/2" in err and "train: 100%" in err and "1/1" in err, err
    evaluate(model, data, batch_size=2, max_objects=2)
    assert "evaluate: 100%" in capsys.readouterr().err
