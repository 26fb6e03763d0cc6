"""Video frames in: a folder of JPEG frames (SAM 2's format), a video file decoded lazily with PyAV, or
any iterator of frames (a camera, a network stream); and video frames out (:func:`write_video`).

Every source gives the model's input the same way, the reference's
(``sam2/utils/misc.py::_load_img_as_tensor``): Pillow's ``.convert("RGB").resize((S, S))`` (its default
bicubic filter, aspect ratio not kept), ``/ 255`` in float64 cast to float32, then ``(x - mean) / std``
in float32. Outputs are NumPy float32 and channels-last, ``(S, S, 3)`` per frame: the reference's
``(3, S, S)`` transposed, so ``load_video_frames`` on a JPEG folder equals
``sam2.utils.misc.load_video_frames(...).permute(0, 2, 3, 1)`` bit for bit. The tracker moves frames to
the device; ``offload_video_to_cpu`` is accepted for the reference's signature and changes nothing here.

Unlike the reference, no EXIF orientation is applied to JPEG frames (the reference applies none either,
and ffmpeg-extracted frames carry none), and a video file is not read whole: :class:`LazyFrames` decodes
a frame when it is indexed, keeps the last ``cache_size`` of them, and continues decoding forwards
without seeking when frames are read in order, so forward iteration holds a few frames, never the video.
The reference decodes video files with decord at ``image_size`` (ffmpeg's scaler); here they are
resized like JPEG frames, so a video and its frames extracted losslessly give the same input.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam_jax.io import as_rgb_uint8

# The reference's defaults (ImageNet statistics, SAM 2's pixel normalisation).
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
# The reference's rule for a JPEG folder: these suffixes exactly, frames ordered by int(stem).
JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")
# Frame rate of an overlay written from a JPEG folder (which has none).
DEFAULT_FPS = 24


def model_input(
    rgb: np.ndarray,
    image_size: int,
    img_mean: Sequence[float] = IMG_MEAN,
    img_std: Sequence[float] = IMG_STD,
) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 RGB frame -> ``(S, S, 3)`` float32 model input, as the reference's
    ``_load_img_as_tensor`` followed by its normalisation (see the module docstring)."""
    resized = np.asarray(Image.fromarray(rgb).convert("RGB").resize((image_size, image_size)))
    x = (resized / 255.0).astype(np.float32)
    return (x - np.asarray(img_mean, np.float32)) / np.asarray(img_std, np.float32)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` reads without decoding the frames."""

    num_frames: int
    height: int
    width: int
    fps: Fraction


# --- sources: random access to (H, W, 3) uint8 RGB frames ---------------------------------------


class _JpegSource:
    """The frames of a JPEG folder, read one file at a time."""

    def __init__(self, folder: Path):
        self.paths = jpeg_frame_paths(folder)
        with Image.open(self.paths[0]) as im:
            self.width, self.height = im.size
        self.fps = Fraction(DEFAULT_FPS)
        self.num_decoded = 0

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read frame {path}: {e}") from e
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame {path} is {rgb.shape[1]} x {rgb.shape[0]} pixels, but the first frame "
                f"{self.paths[0].name} is {self.width} x {self.height}: every frame of a video must have one size"
            )
        self.num_decoded += 1
        return rgb

    def frames_until(self, index: int, keep: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Frame ``index`` (a folder is read one file at a time; ``keep`` is for :class:`_VideoSource`)."""
        yield index, self.read(index)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.read(i) for i in range(len(self)))

    def close(self) -> None:
        pass


def jpeg_frame_paths(folder: str | os.PathLike) -> list[Path]:
    """The frames of a JPEG folder in the reference's order (``int`` of the file stem, suffixes
    :data:`JPEG_SUFFIXES`). Raises ``ValueError`` for a folder without JPEG frames or a frame whose name
    is not an integer."""
    folder = Path(folder)
    names = [p for p in os.listdir(folder) if os.path.splitext(p)[-1] in JPEG_SUFFIXES]
    if not names:
        others = sorted({os.path.splitext(p)[-1] or p for p in os.listdir(folder)})
        found = f"it holds {', '.join(others[:5])} files" if others else "it is empty"
        raise ValueError(
            f"{folder} holds no JPEG frames ({', '.join(JPEG_SUFFIXES)}), {found}: a video folder must hold "
            "frames named <index>.jpg (e.g. `ffmpeg -i video.mp4 -q:v 2 -start_number 0 DIR/%05d.jpg`), "
            "or pass the video file itself"
        )
    for name in names:
        if not os.path.splitext(name)[0].strip().lstrip("+-").isdigit():
            raise ValueError(
                f"JPEG frame names must be integers like 00000.jpg (their order), got {name!r} in {folder}"
            )
    names.sort(key=lambda p: int(os.path.splitext(p)[0]))
    return [folder / name for name in names]


class _VideoSource:
    """A video file (or its bytes) through PyAV, decoded on demand.

    Opening demuxes the file once without decoding, to list every frame's presentation timestamp (so
    frame ``i`` is the ``i``-th in display order, as decord and ffmpeg number them). Reading frame ``i``
    continues the running decoder when ``i`` is at most :attr:`MAX_SKIP` frames ahead of it, and
    otherwise seeks to the keyframe before ``i`` and decodes forwards from there.
    """

    MAX_SKIP = 32

    def __init__(self, video: str | os.PathLike | bytes):
        import av

        self.name = "<bytes>" if isinstance(video, bytes) else str(video)
        try:
            self._container = av.open(io.BytesIO(video) if isinstance(video, bytes) else str(video))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise ValueError(f"cannot read video {self.name}: {e}") from e
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{self.name} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        try:
            pts = [p.pts for p in self._container.demux(self._stream) if p.size > 0]
        except av.FFmpegError as e:
            self._container.close()
            raise ValueError(f"cannot read video {self.name}: {e}") from e
        if not pts:
            self._container.close()
            raise ValueError(f"{self.name} has no video frames")
        # Without timestamps frames can only be counted by decoding from the start; seeks then restart.
        self._pts = None if any(p is None for p in pts) else sorted(pts)
        self._index_of = None if self._pts is None else {p: i for i, p in enumerate(self._pts)}
        self._num_frames = len(pts)
        ctx = self._stream.codec_context
        self.width, self.height = int(ctx.width), int(ctx.height)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = Fraction(rate) if rate else Fraction(DEFAULT_FPS)
        self._frames: Iterator[Any] | None = None
        self._next = 0  # index of the frame self._frames yields next
        self.num_decoded = 0

    def __len__(self) -> int:
        return self._num_frames

    def _restart(self, index: int) -> None:
        import av

        try:
            if self._pts is None or index == 0:
                self._container.seek(0, backward=True, any_frame=False)
            else:
                self._container.seek(self._pts[index], backward=True, any_frame=False, stream=self._stream)
        except av.FFmpegError as e:
            raise ValueError(f"cannot seek in video {self.name}: {e}") from e
        self._frames = self._container.decode(self._stream)
        self._next = None  # known from the first decoded frame's timestamp

    def _decode_next(self) -> tuple[int, Any]:
        import av

        assert self._frames is not None
        try:
            frame = next(self._frames)
        except StopIteration:
            raise ValueError(f"{self.name}: decoding stopped before frame {self._next} of {len(self)}") from None
        except av.FFmpegError as e:
            raise ValueError(f"cannot decode video {self.name}: {e}") from e
        self.num_decoded += 1
        if self._next is None:
            if self._pts is None:
                self._next = 0
            else:
                # After a seek: the frame's place in display order (the nearest listed timestamp).
                k = bisect.bisect_left(self._pts, frame.pts if frame.pts is not None else self._pts[0])
                self._next = min(k, len(self) - 1)
        index = self._next
        self._next += 1
        return index, frame

    def frames_until(self, index: int, keep: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Decode up to frame ``index``, from the running decoder or the keyframe before it; yields
        ``(j, (H, W, 3) uint8)`` for the last ``keep`` frames ``j`` decoded (``index`` last)."""
        if self._frames is None or self._next is None or not (self._next <= index <= self._next + self.MAX_SKIP):
            self._restart(index)
        from_start = self._pts is None or index == 0
        while True:
            j, frame = self._decode_next()
            if j > index:
                if from_start:
                    raise ValueError(f"{self.name}: frame {index} could not be decoded")
                # The seek landed after the frame (no keyframe found before it): decode from the start.
                self._restart(0)
                from_start = True
                continue
            if j > index - keep:
                yield j, frame.to_ndarray(format="rgb24")
            if j == index:
                return

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            *_, (_, rgb) = self.frames_until(i)
            yield rgb

    def close(self) -> None:
        self._container.close()


def _open_source(video_path: str | os.PathLike | bytes) -> _JpegSource | _VideoSource:
    if isinstance(video_path, bytes):
        return _VideoSource(video_path)
    if not isinstance(video_path, (str, os.PathLike)):
        raise TypeError(
            f"video_path must be a path (a JPEG folder or a video file) or bytes, got {type(video_path).__name__}"
        )
    path = Path(video_path)
    if not path.exists():
        raise ValueError(f"video path {path} does not exist (expected a folder of JPEG frames or a video file)")
    return _JpegSource(path) if path.is_dir() else _VideoSource(path)


# --- lazy frames ---------------------------------------------------------------------------------


class LazyFrames(Sequence):
    """A video's model inputs, ``len(self)`` frames of ``(S, S, 3)`` float32, decoded when indexed.

    Keeps the ``cache_size`` frames read or decoded last. Reading in order (either direction within the
    cache) decodes each frame once; a jump seeks (video files) or reads one file (JPEG folders).
    ``video_height``, ``video_width``: the original frame size; ``fps``: the video's frame rate.
    """

    def __init__(
        self,
        source: _JpegSource | _VideoSource,
        image_size: int,
        img_mean: Sequence[float] = IMG_MEAN,
        img_std: Sequence[float] = IMG_STD,
        cache_size: int = 8,
    ):
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self._source = source
        self.image_size = int(image_size)
        self._mean, self._std = tuple(img_mean), tuple(img_std)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.video_height, self.video_width = source.height, source.width
        self.fps = source.fps

    def __len__(self) -> int:
        return len(self._source)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, S, S, 3)``, as the array :func:`load_video_frames` would return eagerly."""
        return (len(self), self.image_size, self.image_size, 3)

    @property
    def num_decoded(self) -> int:
        """Frames decoded (or JPEG files read) so far."""
        return self._source.num_decoded

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"frame index {index} out of range for a video of {n} frames")
        index = int(index) % n
        if index not in self._cache:
            for j, rgb in self._source.frames_until(index, keep=self.cache_size):
                self._put(j, model_input(rgb, self.image_size, self._mean, self._std))
        self._cache.move_to_end(index)
        return self._cache[index]

    def _put(self, index: int, frame: np.ndarray) -> None:
        frame.flags.writeable = False  # shared by every reader of the frame while it is cached
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        """Close the video file (JPEG folders hold nothing open)."""
        self._cache.clear()
        self._source.close()

    def __enter__(self) -> LazyFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_video_frames(
    video_path: str | os.PathLike | bytes,
    image_size: int,
    offload_video_to_cpu: bool = False,
    img_mean: Sequence[float] = IMG_MEAN,
    img_std: Sequence[float] = IMG_STD,
    async_loading_frames: bool = False,
    cache_size: int = 8,
) -> tuple[np.ndarray | LazyFrames, int, int]:
    """A video's frames as the model's input, and its original size: ``(frames, video_height, video_width)``.

    As the reference's ``sam2.utils.misc.load_video_frames``, channels-last (see the module docstring):

    - a folder of JPEG frames (``<index>.jpg``): ``(N, S, S, 3)`` float32, all frames read now, equal to
      the reference's; with ``async_loading_frames`` a :class:`LazyFrames` that reads each frame when it
      is indexed (the reference reads them all in a background thread and keeps them; this one keeps
      ``cache_size``, so memory does not grow with the video);
    - a video file (mp4, mov, mkv, webm, ... anything FFmpeg reads) or its bytes: always a
      :class:`LazyFrames` (decoded on demand; the reference decodes the whole video up front).

    Raises ``ValueError`` naming the problem for a missing path, a folder without JPEG frames, frames of
    different sizes or an unreadable video; ``TypeError`` for a ``video_path`` of another type.
    """
    del offload_video_to_cpu  # host NumPy either way; the tracker places frames on the device
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    source = _open_source(video_path)
    if isinstance(source, _VideoSource) or async_loading_frames:
        lazy = LazyFrames(source, image_size, img_mean, img_std, cache_size)
        lazy[0]  # as the reference: the first frame now (where a user clicks first), and its errors
        return lazy, source.height, source.width
    frames = np.empty((len(source), image_size, image_size, 3), np.float32)
    for i in range(len(source)):
        frames[i] = model_input(source.read(i), image_size, img_mean, img_std)
    return frames, source.height, source.width


def probe_video(video_path: str | os.PathLike | bytes) -> VideoInfo:
    """Frame count, size and frame rate of a JPEG folder or video file, without decoding frames
    (a JPEG folder's rate is :data:`DEFAULT_FPS`). Raises as :func:`load_video_frames`."""
    source = _open_source(video_path)
    try:
        return VideoInfo(len(source), source.height, source.width, source.fps)
    finally:
        source.close()


def iter_rgb_frames(video_path: str | os.PathLike | bytes) -> Iterator[np.ndarray]:
    """A video's frames in order at their own size, ``(H, W, 3)`` uint8 RGB, one at a time."""
    source = _open_source(video_path)
    try:
        yield from source
    finally:
        source.close()


# --- iterator source -----------------------------------------------------------------------------


class IteratorFrames(Iterator[np.ndarray]):
    """Model inputs ``(S, S, 3)`` float32 of frames from any iterable, processed as they arrive.

    ``video_height``, ``video_width`` are the first frame's size (``None`` before it); a later frame of
    another size raises ``ValueError``. ``frames_read`` counts frames taken from the iterable.
    """

    def __init__(
        self,
        frames: Iterable[np.ndarray],
        image_size: int,
        img_mean: Sequence[float] = IMG_MEAN,
        img_std: Sequence[float] = IMG_STD,
        image_format: str = "RGB",
    ):
        if not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR' (OpenCV's cameras), got {image_format!r}")
        self._frames = iter(frames)
        self.image_size = int(image_size)
        self._mean, self._std = tuple(img_mean), tuple(img_std)
        self._format = image_format
        self.video_height: int | None = None
        self.video_width: int | None = None
        self.frames_read = 0

    def __iter__(self) -> IteratorFrames:
        return self

    def __next__(self) -> np.ndarray:
        frame = next(self._frames)
        try:
            rgb = as_rgb_uint8(frame, self._format)
        except (TypeError, ValueError) as e:
            raise type(e)(f"frame {self.frames_read}: {e}") from e
        if self.video_height is None:
            self.video_height, self.video_width = rgb.shape[:2]
        elif rgb.shape[:2] != (self.video_height, self.video_width):
            raise ValueError(
                f"frame {self.frames_read} is {rgb.shape[1]} x {rgb.shape[0]} pixels, but the stream started at "
                f"{self.video_width} x {self.video_height}: every frame of a stream must have one size"
            )
        self.frames_read += 1
        return model_input(rgb, self.image_size, self._mean, self._std)


def frames_from_iterator(
    frames: Iterable[np.ndarray],
    image_size: int,
    img_mean: Sequence[float] = IMG_MEAN,
    img_std: Sequence[float] = IMG_STD,
    image_format: str = "RGB",
) -> IteratorFrames:
    """Stream model inputs from ``frames`` (``(H, W, 3)`` uint8, ``image_format`` "RGB" or "BGR"; gray and
    RGBA as :func:`sam_jax.io.as_rgb_uint8`), one ``(S, S, 3)`` float32 frame per frame taken: nothing is
    read ahead or kept, so a camera or network stream can run indefinitely."""
    return IteratorFrames(frames, image_size, img_mean, img_std, image_format)


# --- writing -------------------------------------------------------------------------------------


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = DEFAULT_FPS,
    *,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> int:
    """Encode ``(H, W, 3)`` uint8 RGB frames (one size) as a video file (format from ``path``'s suffix),
    atomically: the file appears under ``path`` only once complete. Odd sizes are padded by one edge
    row/column (yuv420p needs even ones). ``options``: the codec's (e.g. ``{"crf": "18", "g": "4"}``).
    Returns the number of frames written."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    fmt = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"video file must end in .mp4, .mov, .mkv, .webm or .avi, got {path.name!r}")
    n = 0
    try:
        with av.open(str(tmp), mode="w", format=fmt) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001 * 1000), options=options)
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                rgb = as_rgb_uint8(frame)
                if n == 0:
                    stream.height, stream.width = (rgb.shape[0] + 1) // 2 * 2, (rgb.shape[1] + 1) // 2 * 2
                    size = rgb.shape[:2]
                elif rgb.shape[:2] != size:
                    raise ValueError(f"frame {n} is {rgb.shape[:2]}, frame 0 was {size}: one size per video")
                pad = ((0, stream.height - rgb.shape[0]), (0, stream.width - rgb.shape[1]), (0, 0))
                rgb = np.pad(rgb, pad, mode="edge")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
                n += 1
            if n == 0:
                raise ValueError(f"no frames to write to {path}")
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


__all__ = [
    "DEFAULT_FPS",
    "IMG_MEAN",
    "IMG_STD",
    "IteratorFrames",
    "LazyFrames",
    "VideoInfo",
    "frames_from_iterator",
    "iter_rgb_frames",
    "jpeg_frame_paths",
    "load_video_frames",
    "model_input",
    "probe_video",
    "write_video",
]
