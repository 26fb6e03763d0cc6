"""``sam-jax track``: prompts grouped by frame and object, the files written (layout, formats,
atomicity), resuming, errors; through a fake predictor with ``SAM2VideoPredictor``'s API, plus one
end-to-end run with the real predictor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from sam_jax import track
from sam_jax.cli import main
from sam_jax.track import (
    PNG_PALETTE,
    ObjectPrompt,
    group_prompts,
    load_video_predictor,
    read_mask_file,
    tracked_frames,
)
from sam_jax.video_frames import iter_rgb_frames, probe_video

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_video_clips import FPS, write_clip

H, W, T = 192, 256, 16


class FakePredictor:
    """``SAM2VideoPredictor``'s API; object k's mask on frame t is a disc of radius 10 + k around its
    first prompt (a point, else the box centre), moved 3 px right per frame. Records every call."""

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[tuple] = []
        self.interrupt_after = interrupt_after

    def init_state(
        self, video_path, offload_video_to_cpu=False, offload_state_to_cpu=False, async_loading_frames=False
    ):
        info = probe_video(video_path)
        self.calls.append(("init_state", video_path, async_loading_frames))
        return {"num_frames": info.num_frames, "video_height": info.height, "video_width": info.width, "obj": {}}

    def add_new_points_or_box(
        self,
        inference_state,
        frame_idx,
        obj_id,
        points=None,
        labels=None,
        clear_old_points=True,
        normalize_coords=True,
        box=None,
    ):
        self.calls.append(("add", frame_idx, obj_id, points, labels, box))
        centre = points[0] if points is not None else (box[:2] + box[2:]) / 2
        inference_state["obj"].setdefault(obj_id, centre)
        ids = list(inference_state["obj"])
        return frame_idx, ids, self.logits(inference_state, frame_idx)

    def logits(self, state, frame_idx):
        yy, xx = np.mgrid[0 : state["video_height"], 0 : state["video_width"]]
        out = []
        for k, (x, y) in state["obj"].items():
            inside = (xx - x - 3 * frame_idx) ** 2 + (yy - y) ** 2 <= (10 + k) ** 2
            out.append(np.where(inside, 5.0, -5.0)[None].astype(np.float32))
        return np.stack(out)  # (O, 1, H, W)

    def propagate_in_video(
        self, inference_state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False, *, keep_outputs=True
    ):
        self.calls.append(("propagate", start_frame_idx, max_frame_num_to_track, reverse, keep_outputs))
        frames = tracked_frames(inference_state["num_frames"], start_frame_idx, reverse, max_frame_num_to_track)
        for n, t in enumerate(frames):
            if self.interrupt_after is not None and n == self.interrupt_after:
                raise KeyboardInterrupt
            yield t, list(inference_state["obj"]), self.logits(inference_state, t)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("clips")
    return {"jpg": write_clip("shapes", out, "jpg")[0], "mp4": write_clip("shapes", out, "mp4")[0]}


class Made(list):
    """The FakePredictors made so far; the next one is interrupted after ``interrupt_after`` frames."""

    interrupt_after: int | None = None


@pytest.fixture
def fake(monkeypatch) -> Made:
    """Every ``track`` command gets a new FakePredictor; no checkpoint needed."""
    made = Made()

    def load(checkpoint):
        made.append(FakePredictor(made.interrupt_after))
        return made[-1]

    monkeypatch.setattr(track, "load_video_predictor", load)
    monkeypatch.setattr(track, "check_video_checkpoint", lambda checkpoint: None)
    return made


def _run(video, out, *prompts, extra=()):
    return main(["track", str(video), "--checkpoint", "ckpt", "--output", str(out), *prompts, *extra])


PROMPTS = ("--frame", "0", "--point", "60,50", "--point", "20,20,0", "--obj-id", "2", "--box", "120,110,170,150")


def _expected(obj_centres: dict[int, tuple[float, float]], t: int) -> dict[int, np.ndarray]:
    state = {"video_height": H, "video_width": W, "obj": {k: np.array(c) for k, c in obj_centres.items()}}
    return {k: m[0] > 0 for k, m in zip(obj_centres, FakePredictor().logits(state, t), strict=True)}


def test_png_masks_overlay_and_manifest(clips, fake, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(clips["jpg"], out, *PROMPTS) == 0
    (predictor,) = fake
    assert [c[0] for c in predictor.calls] == ["init_state", "add", "add", "propagate"]
    _, frame, obj, points, labels, box = predictor.calls[1]
    assert (frame, obj, box) == (0, 1, None)
    np.testing.assert_array_equal(points, [[60, 50], [20, 20]])
    np.testing.assert_array_equal(labels, [1, 0])
    assert predictor.calls[2][1:3] == (0, 2) and predictor.calls[2][3] is None
    np.testing.assert_array_equal(predictor.calls[2][5], [120, 110, 170, 150])
    assert predictor.calls[0][2] is True  # frames read on demand
    assert predictor.calls[3] == ("propagate", 0, None, False, False)  # outputs dropped behind (constant memory)
    files = sorted(p.name for p in (out / "masks").iterdir())
    assert files == [f"{t:05d}.png" for t in range(T)]
    for t in (0, 7, 15):
        with Image.open(out / "masks" / f"{t:05d}.png") as im:
            assert im.mode == "P" and im.size == (W, H)
            np.testing.assert_array_equal(np.asarray(im.getpalette(), np.uint8)[:9], PNG_PALETTE[:3].ravel())
            labels_png = np.asarray(im)
        expected = _expected({1: (60, 50), 2: (145, 130)}, t)
        np.testing.assert_array_equal(labels_png == 1, expected[1] & ~expected[2])
        np.testing.assert_array_equal(labels_png == 2, expected[2])
    info = probe_video(out / "overlay.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (T, H, W, 24)
    first = next(iter_rgb_frames(out / "overlay.mp4")).astype(float)
    raw = next(iter_rgb_frames(clips["jpg"])).astype(float)
    inside = _expected({1: (60, 50)}, 0)[1]
    assert np.abs(first - raw)[inside].mean() > 20 > np.abs(first - raw)[~inside].mean()  # blended there only
    manifest = json.loads((out / "track.json").read_text())
    assert manifest["complete"] and manifest["frames"] == [0, T - 1] and manifest["obj_ids"] == [1, 2]
    assert manifest["written"] == T and manifest["kept"] == 0 and manifest["format"] == "png"
    assert "tracked frames 0..15, objects [1, 2] (16 files written, 0 kept)" in capsys.readouterr().out
    assert not list(out.rglob("*.partial"))


def test_coco_json_from_mp4(clips, fake, tmp_path):
    out = tmp_path / "out"
    assert _run(clips["mp4"], out, "--obj-id", "3", "--point", "60,50", extra=("--format", "coco")) == 0
    record = json.loads((out / "masks" / "00004.json").read_text())
    assert (record["frame"], record["height"], record["width"]) == (4, H, W)
    (obj,) = record["objects"]
    expected = _expected({3: (60, 50)}, 4)[3]
    np.testing.assert_array_equal(read_mask_file(out / "masks" / "00004.json", [3])[0], expected)
    assert obj["obj_id"] == 3 and obj["area"] == int(expected.sum()) and isinstance(obj["segmentation"]["counts"], str)
    ys, xs = np.nonzero(expected)
    assert obj["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert probe_video(out / "overlay.mp4").fps == FPS  # the video's own rate


def test_frames_and_objects_apply_to_the_prompts_after_them(clips, fake, tmp_path):
    argv = ["--frame", "2", "--obj-id", "1", "--point", "60,50", "--obj-id", "2", "--box", "10,20,60,90"]
    argv += ["--frame", "9", "--obj-id", "1", "--point", "90,50,0", "--point", "95,55"]
    assert _run(clips["jpg"], tmp_path / "out", *argv, extra=("--reverse", "--no-overlay")) == 0
    adds = [c for c in fake[0].calls if c[0] == "add"]
    assert [(c[1], c[2]) for c in adds] == [(2, 1), (2, 2), (9, 1)]
    np.testing.assert_array_equal(adds[2][3], [[90, 50], [95, 55]])
    np.testing.assert_array_equal(adds[2][4], [0, 1])
    assert fake[0].calls[-1] == ("propagate", 9, None, True, False)  # backwards from the last prompted frame
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [f"{t:05d}.png" for t in range(10)]
    assert not (tmp_path / "out" / "overlay.mp4").exists()


def test_max_frames(clips, fake, tmp_path):
    assert _run(clips["jpg"], tmp_path, "--frame", "5", "--point", "60,50", extra=("--max-frames", "3")) == 0
    assert fake[0].calls[-1] == ("propagate", 5, 3, False, False)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{t:05d}.png" for t in range(5, 9)]


def test_group_prompts():
    prompts = group_prompts([("point", 0, 1, [1, 2]), ("box", 0, 1, [0, 0, 5, 5]), ("point", 0, 1, [3, 4, 0])])
    assert len(prompts) == 1 and isinstance(prompts[0], ObjectPrompt)
    np.testing.assert_array_equal(prompts[0].points, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(prompts[0].labels, [1, 0])
    np.testing.assert_array_equal(prompts[0].box, [0, 0, 5, 5])
    assert tracked_frames(16, 0, True, None) == range(0)
    assert list(tracked_frames(16, 5, True, 2)) == [5, 4, 3]
    assert list(tracked_frames(16, 14, False, 5)) == [14, 15]


def test_interrupted_run_resumes_keeping_written_frames(clips, fake, tmp_path, capsys):
    out = tmp_path / "out"
    fake.interrupt_after = 5
    assert _run(clips["jpg"], out, *PROMPTS) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err == (
        "sam-jax track: interrupted: mask files written are whole; run the same command again: it re-tracks "
        "from the prompts, keeping them"
    )
    written = sorted((out / "masks").iterdir())
    assert [p.name for p in written] == [f"{t:05d}.png" for t in range(5)]
    assert not list(out.rglob("*.partial")) and not (out / "overlay.mp4").exists()
    assert json.loads((out / "track.json").read_text())["complete"] is False
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written}

    fake.interrupt_after = None
    assert _run(clips["jpg"], out, *PROMPTS) == 0
    assert fake[-1].calls[-1] == ("propagate", 0, None, False, False)  # tracked again from the prompts
    assert "(11 files written, 5 kept)" in capsys.readouterr().out
    assert {p: (s := (out / "masks" / p).stat()) and (s.st_ino, s.st_mtime_ns) for p in stamps} == stamps
    assert len(list((out / "masks").iterdir())) == T and (out / "overlay.mp4").exists()

    (out / "overlay.mp4").unlink()
    assert _run(clips["jpg"], out, *PROMPTS) == 0
    assert len(fake) == 2  # complete: no predictor made, only the overlay written again
    assert "already complete: frames 0..15" in capsys.readouterr().out
    assert (out / "overlay.mp4").exists()

    assert _run(clips["jpg"], out, "--point", "61,50") == 2
    assert (
        "holds masks of another tracking run (its track.json differs in: prompts); give another --output, or --force"
        in (capsys.readouterr().err)
    )
    assert _run(clips["jpg"], out, "--point", "61,50", extra=("--force", "--max-frames", "1")) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000.png", "00001.png"]


def test_output_of_unknown_origin_is_refused(clips, fake, tmp_path, capsys):
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "00000.png").write_bytes(b"x")
    assert _run(clips["jpg"], tmp_path, "--point", "60,50") == 2
    assert "holds a masks/ folder but no track.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give at least one --point or --box"),
        (["--point", "60,50", "--obj-id", "2"], "--obj-id 2 is not followed by a --point or --box"),
        (["--box", "0,0,9,9", "--box", "1,1,9,9"], "object 1 has two boxes on frame 0"),
        (["--point", "300,50"], "frame 0, object 1: point 300,50 is outside the image, which is 256 x 192"),
        (["--frame", "16", "--point", "1,1"], "--frame 16 is not in the video, which has 16 frames (0..15)"),
        (["--point", "1,1,2"], "point label must be 1 (foreground) or 0 (background), got 2"),
        (["--obj-id", "0", "--point", "1,1"], "--obj-id must be >= 1, got 0"),
        (["--obj-id", "300", "--point", "1,1"], "object ids must be 1..255 with --format png, got 300"),
        (["--point", "1,1", "--reverse"], "tracking backwards from frame 0 covers no frames"),
    ],
)
def test_bad_prompts_exit_2_with_one_line(clips, fake, tmp_path, capsys, argv, message):
    assert _run(clips["jpg"], tmp_path / "out", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam-jax track: error: ") and message in err and err.count("\n") == 1, err
    assert not fake  # refused before any model is loaded


def test_bad_videos_and_checkpoints(tmp_path, capsys, monkeypatch):
    from sam_jax.assets import demo_checkpoint_dir

    video = write_clip("shapes", tmp_path, "jpg", num_frames=2)[0]
    cases = [
        ([str(tmp_path / "missing"), "--checkpoint", "c"], "does not exist"),
        ([str(video)], "tracking needs a SAM 2 model with its video weights: pass --checkpoint DIR"),
        ([str(video), "--checkpoint", str(tmp_path)], "is not a sam_jax checkpoint directory"),
        ([str(video), "--checkpoint", str(demo_checkpoint_dir())], "holds SAM 1 model"),
    ]
    check = track.check_video_checkpoint
    monkeypatch.setattr(track, "load_video_predictor", lambda c: pytest.fail("no model should load"))
    for argv, message in cases:
        monkeypatch.setattr(track, "check_video_checkpoint", (lambda c: None) if "missing" in argv[0] else check)
        assert main(["track", *argv, "--point", "1,1", "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sam-jax track: error: ") and message in err and err.count("\n") == 1, err


def test_help_lists_track():
    with pytest.raises(SystemExit):
        main(["track", "--help"])


# --- end to end: the real SAM2VideoPredictor ------------------------------------------------------


def _random_sam2_checkpoint(directory: Path) -> None:
    """A sam2_test checkpoint directory with random weights (normal, std 0.05; filled into abstract
    models, which is much faster than running the initialisers) and its video.safetensors."""
    from flax import nnx
    from safetensors.numpy import save_file

    from sam_jax import build_sam, save_sam
    from sam_jax.convert import sam2_video_rules
    from sam_jax.models.registry import build_model
    from sam_jax.models.sam2.config import get_config

    cfg = get_config("sam2_test")
    rng = np.random.default_rng(0)

    def draw(abstract: nnx.Module) -> dict:
        shapes = nnx.to_pure_dict(nnx.state(abstract))
        return jax.tree_util.tree_map(lambda v: (0.05 * rng.standard_normal(v.shape)).astype(np.float32), shapes)

    save_sam(build_sam(cfg, params=draw(nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0))))), directory)
    video = sam2_video_rules.build_video_parts(cfg, draw(sam2_video_rules.abstract_video_parts(cfg)))
    state_dict = sam2_video_rules.to_state_dict(nnx.to_pure_dict(nnx.state(video)), cfg)
    save_file(
        {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}, str(directory / "video.safetensors")
    )


def test_end_to_end_with_the_video_predictor(tmp_path, monkeypatch):
    """The command's masks equal the predictor's own ``propagate_in_video`` output thresholded at 0
    (random sam2_test weights, 3 frames, two objects)."""
    made = []

    def load(checkpoint):  # the command's own predictor, kept to compare with (and not loaded twice)
        made.append(load_video_predictor(checkpoint))
        return made[-1]

    monkeypatch.setattr(track, "load_video_predictor", load)
    ckpt = tmp_path / "ckpt"
    _random_sam2_checkpoint(ckpt)
    video, clip = write_clip("shapes", tmp_path, "jpg", num_frames=3)
    (x1, y1), box = clip.points[0, 0], clip.boxes[0, 1]
    out = tmp_path / "out"
    argv = ["track", str(video), "--checkpoint", str(ckpt), "--output", str(out), "--point", f"{x1},{y1}"]
    assert main([*argv, "--obj-id", "2", "--box", ",".join(map(str, box)), "--no-overlay"]) == 0

    (predictor,) = made
    state = predictor.init_state(video_path=str(video))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[x1, y1]]), labels=np.array([1]))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2, box=box)
    frames = 0
    for t, obj_ids, logits in predictor.propagate_in_video(state):
        masks = np.asarray(logits)[:, 0] > 0
        np.testing.assert_array_equal(
            read_mask_file(out / "masks" / f"{t:05d}.png", list(obj_ids)), [masks[0] & ~masks[1], masks[1]]
        )
        frames += 1
    assert frames == 3 and json.loads((out / "track.json").read_text())["written"] == 3
