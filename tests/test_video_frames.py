"""Video frames in and out: a JPEG folder equal to the reference's loader, video files decoded lazily
through PyAV, the iterator source, errors."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax.video_frames import (
    LazyFrames,
    frames_from_iterator,
    iter_rgb_frames,
    load_video_frames,
    model_input,
    probe_video,
    write_video,
)

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_video_clips import FPS, make_clip, write_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("clips")
    return {
        "shapes_jpg": write_clip("shapes", out, "jpg")[0],
        "photo_jpg": write_clip("photo", out, "jpg")[0],
        "shapes_mp4": write_clip("shapes", out, "mp4")[0],
    }


def _reference_frames(path: Path, image_size: int, async_loading: bool = False):
    torch = pytest.importorskip("torch")
    misc = pytest.importorskip("sam2.utils.misc")
    frames, h, w = misc.load_video_frames(
        str(path), image_size, True, async_loading_frames=async_loading, compute_device=torch.device("cpu")
    )
    if async_loading:
        return np.stack([frames[i].permute(1, 2, 0).numpy() for i in range(len(frames))]), h, w
    return frames.permute(0, 2, 3, 1).numpy(), h, w


# --- JPEG folders: the reference's loader ---------------------------------------------------------


@pytest.mark.parametrize(("clip", "image_size"), [("shapes_jpg", 64), ("photo_jpg", 100)])
def test_jpeg_folder_equals_reference_loader(clips, clip, image_size):
    """Bit for bit (max |diff| 0): the reference's ``load_video_frames`` (NCHW) transposed to NHWC."""
    ref, ref_h, ref_w = _reference_frames(clips[clip], image_size)
    ours, h, w = load_video_frames(clips[clip], image_size)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32 and ours.shape == (16, image_size, image_size, 3)
    assert (h, w) == (ref_h, ref_w)
    np.testing.assert_array_equal(ours, ref)


def test_jpeg_folder_async_is_lazy_and_equals_eager(clips):
    """``async_loading_frames``: a LazyFrames equal to the eager array; the reference's async loader keeps
    float64 frames, which agree to float32 rounding (max |diff| measured 2.5e-7)."""
    eager, _, _ = load_video_frames(clips["shapes_jpg"], 64)
    lazy, h, w = load_video_frames(clips["shapes_jpg"], 64, async_loading_frames=True, cache_size=3)
    assert isinstance(lazy, LazyFrames) and lazy.shape == eager.shape and (h, w) == (192, 256)
    assert lazy.num_decoded == 1  # only the first frame so far, as the reference
    np.testing.assert_array_equal(np.stack(list(lazy)), eager)
    assert len(lazy._cache) == 3
    ref, _, _ = _reference_frames(clips["shapes_jpg"], 64, async_loading=True)
    assert np.max(np.abs(np.stack(list(lazy)) - ref)) <= 1e-6


def test_jpeg_frames_ordered_by_integer_name_as_reference(tmp_path):
    colours = {"0": 10, "1": 60, "2": 110, "10": 160, "007": 210}
    for stem, value in colours.items():
        Image.fromarray(np.full((8, 12, 3), value, np.uint8)).save(tmp_path / f"{stem}.jpg", quality=100)
    (tmp_path / "notes.txt").write_text("ignored")
    ours, h, w = load_video_frames(tmp_path, 4, img_mean=(0, 0, 0), img_std=(1, 1, 1))
    assert (h, w) == (8, 12)
    np.testing.assert_allclose(ours[:, 0, 0, 0] * 255, [10, 60, 110, 210, 160], atol=2)  # 0, 1, 2, 7, 10
    ref, _, _ = _reference_frames(tmp_path, 4)
    np.testing.assert_array_equal(load_video_frames(tmp_path, 4)[0], ref)


# --- video files: PyAV, lazily --------------------------------------------------------------------


def _decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` decoded plainly with PyAV, independent of sam_jax.video_frames."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_mp4_frames_are_decoded_lazily_and_in_display_order(clips):
    path = clips["shapes_mp4"]
    expected = [model_input(rgb, 64) for rgb in _decode_all(path)]
    frames, h, w = load_video_frames(path, 64)
    assert isinstance(frames, LazyFrames) and len(frames) == 16 and (h, w) == (192, 256)
    assert frames.num_decoded == 1 and frames.fps == FPS
    for i in range(16):  # forward: each frame decoded once, no seeking
        np.testing.assert_array_equal(frames[i], expected[i])
    assert frames.num_decoded == 16
    # Frame i is the clip's frame i (H.264 with B-frames and a keyframe every 4: display order, no shift).
    source = make_clip("shapes").frames.astype(np.float32)
    decoded = np.stack(_decode_all(path)).astype(np.float32)
    nearest = np.abs(decoded[:, None] - source[None]).mean(axis=(2, 3, 4)).argmin(axis=1)
    np.testing.assert_array_equal(nearest, np.arange(16))


def test_mp4_random_and_reverse_access_seek(clips):
    path = clips["shapes_mp4"]
    expected = [model_input(rgb, 48) for rgb in _decode_all(path)]
    with load_video_frames(path, 48, cache_size=2)[0] as frames:
        for i in reversed(range(16)):
            np.testing.assert_array_equal(frames[i], expected[i])
        # Backwards, each seek decodes from the keyframe before (at most 4 frames back): 34 decodes
        # measured; decoding from the start for every frame would be 136.
        assert frames.num_decoded <= 3 * 16
        for i in np.random.default_rng(0).integers(0, 16, 30):
            np.testing.assert_array_equal(frames[int(i)], expected[int(i)])
        np.testing.assert_array_equal(frames[-1], expected[15])
        with pytest.raises(IndexError, match="out of range"):
            frames[16]


def test_mp4_bytes_and_raw_frames(clips):
    path = clips["shapes_mp4"]
    frames, h, w = load_video_frames(path.read_bytes(), 32)
    assert (len(frames), h, w) == (16, 192, 256)
    raw = _decode_all(path)
    np.testing.assert_array_equal(frames[5], model_input(raw[5], 32))
    for a, b in itertools.zip_longest(iter_rgb_frames(path), raw):
        np.testing.assert_array_equal(a, b)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (16, 192, 256, FPS)
    info = probe_video(clips["shapes_jpg"])
    assert (info.num_frames, info.height, info.width) == (16, 192, 256)


def test_forward_iteration_holds_a_few_frames(tmp_path):
    """64 frames of 128 x 128 model input (12.6 MB together): reading them in order keeps at most
    ``cache_size`` processed frames, and Python-side allocations peak far below the whole video."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 128, 3), np.uint8)
    path = tmp_path / "long.mp4"
    write_video(path, (np.roll(base, 2 * i, axis=1) for i in range(64)), 24, options={"g": "8"})
    frame_bytes = 128 * 128 * 3 * 4
    with load_video_frames(path, 128, cache_size=4)[0] as frames:
        tracemalloc.start()
        total = 0.0
        for frame in frames:
            total += float(frame[0, 0, 0])
            assert len(frames._cache) <= 4
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert frames.num_decoded == 64
    assert peak < 10 * frame_bytes, f"peak {peak / 1e6:.1f} MB while iterating"


# --- iterator source ------------------------------------------------------------------------------


def test_iterator_source_equals_folder_loader(clips):
    """JPEG frames decoded by Pillow and streamed give exactly the folder loader's input."""
    paths = sorted(clips["shapes_jpg"].glob("*.jpg"))
    rgb = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    stream = frames_from_iterator(iter(rgb), 64)
    assert stream.video_height is None
    streamed = np.stack(list(stream))
    assert (stream.video_height, stream.video_width, stream.frames_read) == (192, 256, 16)
    np.testing.assert_array_equal(streamed, load_video_frames(clips["shapes_jpg"], 64)[0])
    bgr = frames_from_iterator((f[..., ::-1] for f in rgb[:2]), 64, image_format="BGR")
    np.testing.assert_array_equal(np.stack(list(bgr)), streamed[:2])


def test_iterator_source_reads_on_demand():
    taken = []

    def camera():
        for i in itertools.count():
            taken.append(i)
            yield np.full((20, 30), i, np.uint8)  # gray, replicated to RGB

    stream = frames_from_iterator(camera(), 16)
    first = [next(stream) for _ in range(3)]
    assert taken == [0, 1, 2] and stream.frames_read == 3 and first[0].shape == (16, 16, 3)


def test_iterator_source_errors():
    with pytest.raises(TypeError, match="frame 1: image must be uint8"):
        list(frames_from_iterator([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)], 8))
    with pytest.raises(ValueError, match=r"frame 1 is 5 x 4 pixels, but the stream started at 4 x 4"):
        list(frames_from_iterator([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], 8))
    with pytest.raises(ValueError, match="image_format must be"):
        frames_from_iterator([], 8, image_format="YUV")


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist .*folder of JPEG frames or a video file"):
        load_video_frames(tmp_path / "missing", 64)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds no JPEG frames .*it is empty"):
        load_video_frames(empty, 64)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.new("RGB", (4, 4)).save(pngs / "00000.png")
    with pytest.raises(ValueError, match=r"holds no JPEG frames .*it holds \.png files"):
        load_video_frames(pngs, 64)
    named = tmp_path / "named"
    named.mkdir()
    Image.new("RGB", (4, 4)).save(named / "frame_a.jpg")
    with pytest.raises(ValueError, match=r"JPEG frame names must be integers like 00000\.jpg .*'frame_a\.jpg'"):
        load_video_frames(named, 64)
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.new("RGB", (4, 4)).save(sizes / "0.jpg")
    Image.new("RGB", (6, 4)).save(sizes / "1.jpg")
    with pytest.raises(ValueError, match=r"1\.jpg is 6 x 4 pixels, but the first frame 0\.jpg is 4 x 4"):
        load_video_frames(sizes, 8)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(ValueError, match=r"cannot read video .*broken.mp4"):
        load_video_frames(broken, 64)
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    with pytest.raises(ValueError, match="cannot read video"):
        probe_video(text)
    with pytest.raises(TypeError, match=r"video_path must be a path .* got int"):
        load_video_frames(3, 64)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_video_frames(empty, 0)


def test_write_video_pads_odd_sizes_and_is_atomic(tmp_path):
    frames = [np.full((33, 47, 3), 40 * i, np.uint8) for i in range(5)]
    path = tmp_path / "odd.mp4"
    assert write_video(path, frames, 10) == 5
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (5, 34, 48, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["odd.mp4"]

    def failing():
        yield frames[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "cut.mp4", failing(), 10)
    assert [p.name for p in tmp_path.iterdir()] == ["odd.mp4"]  # neither cut.mp4 nor its .partial
    with pytest.raises(ValueError, match=r"must end in \.mp4"):
        write_video(tmp_path / "x.gif", frames, 10)
