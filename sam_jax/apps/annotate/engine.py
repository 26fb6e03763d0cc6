"""The model behind the page: prompts -> masks, "segment everything", image embeddings cached.

An image's embedding is computed once: it is kept in memory (a few recent images) and on disk as
``<cache>/<key>.npz`` (:meth:`SamPredictor.get_image_state`), ``key`` hashing the image file's bytes
and the model's identity (its ``config.json`` and its ``params/`` listing: names, sizes, mtimes).
Decoding a prompt restores the embedding with :meth:`SamPredictor.set_image_state`, never
re-encodes. Every model call runs on one :class:`PriorityWorker` thread; the public methods return
futures (the server awaits them with ``asyncio.wrap_future``).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam_jax.apps.annotate import rle
from sam_jax.apps.annotate.paths import atomic_write
from sam_jax.apps.annotate.validation import Prompts
from sam_jax.apps.annotate.worker import PREFETCH, USER, WARMUP, PriorityWorker

CACHE_FORMAT = b"sam-jax-annotate-embedding/1"
_STATE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class ImageReadError(ValueError):
    """An image file that cannot be decoded (answered as 422)."""


def model_identity(checkpoint: str | os.PathLike) -> str:
    """Hex digest naming a checkpoint directory's weights: its ``config.json`` bytes plus the
    relative path, size and mtime of every file under ``params/`` (cheap: no weight is read)."""
    root = Path(checkpoint).resolve()
    h = hashlib.sha256(CACHE_FORMAT + b"\0")
    config = root / "config.json"
    h.update(config.read_bytes() if config.is_file() else str(root).encode())
    params = root / "params"
    for p in sorted(params.rglob("*")) if params.is_dir() else ():
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(params).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    from sam_jax.io import read_image  # the library's one reader: upright by EXIF orientation

    try:
        return read_image(path)
    except (ValueError, OSError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {path.name}: {e}") from e


class Engine:
    """A SAM model, its predictor and embedding caches, behind one worker thread.

    Args:
      model: a loaded sam_jax ``Sam``.
      checkpoint: its checkpoint directory (for the cache key, :func:`model_identity`).
      cache_dir: folder of the on-disk embedding cache (None: memory only).
      memory_slots: embeddings kept in memory.
      cache_limit_bytes: the disk cache is trimmed (oldest first) to this size; None: no limit.
    """

    def __init__(
        self,
        model: Any,
        checkpoint: str | os.PathLike,
        cache_dir: str | os.PathLike | None,
        *,
        memory_slots: int = 8,
        cache_limit_bytes: int | None = 2 << 30,
        read_image: Callable[[Path], np.ndarray] = _read_image,
    ) -> None:
        from sam_jax import SamPredictor

        self.model = model
        self.model_name = str(getattr(model.config, "name", "sam"))
        self.model_id = model_identity(checkpoint)
        self.predictor = SamPredictor(model)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.memory_slots = memory_slots
        self.cache_limit_bytes = cache_limit_bytes
        self.read_image = read_image
        # Counters for the status endpoint and the tests: encoded, disk_hits, memory_hits, ...
        self.stats: Counter[str] = Counter()
        self._states: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._current: str | None = None
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        self._generators: OrderedDict[tuple, Any] = OrderedDict()
        self._proposals: OrderedDict[tuple, list[dict[str, Any]]] = OrderedDict()
        self._worker = PriorityWorker()

    # --- public: thread-safe, return futures ----------------------------------------------------

    def embed(self, path: Path) -> Future[dict[str, Any]]:
        """Make ``path``'s embedding ready; ``{"embedding": "memory" | "disk" | "computed", "seconds"}``."""
        return self._worker.submit(self._embed, path, priority=USER)

    def prefetch(self, path: Path) -> Future[dict[str, Any]]:
        """Compute ``path``'s embedding in the background (after any user request) unless cached."""
        return self._worker.submit(self._prefetch, path, priority=PREFETCH)

    def predict(self, path: Path, prompts: Prompts) -> Future[dict[str, Any]]:
        """Masks for ``prompts`` on image ``path``: ``{"masks": [{"segmentation": RLE, "score",
        "area", "bbox"}, ...] (3 with multimask, else 1), "best": index, "embedding": source}``."""
        return self._worker.submit(self._predict, path, prompts, priority=USER)

    def automatic(self, path: Path, settings: dict[str, float]) -> Future[list[dict[str, Any]]]:
        """ "Segment everything" with :class:`sam_jax.SamAutomaticMaskGenerator` (``settings``:
        points_per_side, pred_iou_thresh, stability_score_thresh); proposals sorted by area,
        each ``{"segmentation": RLE, "bbox": XYWH, "area", "predicted_iou", "stability_score",
        "point": [x, y] | None}``."""
        return self._worker.submit(self._automatic, path, dict(settings), priority=USER)

    def warmup(self, path: Path, point_counts: Sequence[int] = (1, 2, 4, 8)) -> Future[None]:
        """Compile the decoder for common prompt shapes on ``path`` in the background, so the first
        clicks do not wait for compilation."""
        return self._worker.submit(self._warmup, path, tuple(point_counts), priority=WARMUP)

    def busy(self) -> int:
        """Jobs waiting for the model."""
        return self._worker.pending()

    def close(self) -> None:
        self._worker.close()

    # --- worker side ----------------------------------------------------------------------------

    def _file_hash(self, path: Path) -> str:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._hashes.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self._hashes[path] = (stamp, h.hexdigest())
        return h.hexdigest()

    def cache_key(self, path: Path) -> str:
        """Name of ``path``'s embedding in the caches (image bytes x model identity)."""
        return hashlib.sha256(f"{self.model_id}:{self._file_hash(path)}".encode()).hexdigest()[:40]

    def _cache_file(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.npz"

    def _remember(self, key: str, state: dict[str, np.ndarray]) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.memory_slots:
            self._states.popitem(last=False)

    def _load_disk(self, key: str) -> dict[str, np.ndarray] | None:
        file = self._cache_file(key)
        if file is None or not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
            self.predictor.set_image_state(state)
        except _STATE_ERRORS:
            file.unlink(missing_ok=True)  # corrupt or from another model: recompute
            return None
        os.utime(file)  # recently used: trimmed last
        return state

    def _save_disk(self, key: str, state: dict[str, np.ndarray]) -> None:
        file = self._cache_file(key)
        if file is None:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **state)
        atomic_write(file, buf.getvalue(), durable=False)  # a lost cache file is only recomputed
        self._trim_disk(keep=file)

    def _trim_disk(self, keep: Path) -> None:
        if self.cache_limit_bytes is None or self.cache_dir is None:
            return
        files = []
        for f in self.cache_dir.glob("*.npz"):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, f))
        total = sum(size for _, size, _ in files)
        for _, size, f in sorted(files):
            if total <= self.cache_limit_bytes:
                break
            if f != keep:
                f.unlink(missing_ok=True)
                total -= size

    def _ensure(self, path: Path) -> str:
        """Make ``path`` the predictor's image; returns where its embedding came from."""
        key = self.cache_key(path)
        if key == self._current and self.predictor.is_image_set:
            self.stats["memory_hits"] += 1
            return "memory"
        state = self._states.get(key)
        if state is not None:
            self.predictor.set_image_state(state)
            self._states.move_to_end(key)
            self._current = key
            self.stats["memory_hits"] += 1
            return "memory"
        self._current = None
        state = self._load_disk(key)
        source = "disk"
        if state is None:
            image = self.read_image(path)
            self.predictor.set_image(image)
            state = self.predictor.get_image_state()
            self._save_disk(key, state)
            source = "computed"
        self.stats["encoded" if source == "computed" else "disk_hits"] += 1
        self._remember(key, state)
        self._current = key
        return source

    def _embed(self, path: Path) -> dict[str, Any]:
        start = time.perf_counter()
        source = self._ensure(path)
        return {"embedding": source, "seconds": round(time.perf_counter() - start, 3)}

    def _prefetch(self, path: Path) -> dict[str, Any]:
        key = self.cache_key(path)
        file = self._cache_file(key)
        if key in self._states or (file is not None and file.is_file()):
            return {"embedding": "cached"}
        self.stats["prefetched"] += 1
        return self._embed(path)

    def _predict(self, path: Path, p: Prompts) -> dict[str, Any]:
        source = self._ensure(path)
        start = time.perf_counter()
        masks, scores, _ = self.predictor.predict(
            p.points if len(p.points) else None,
            p.labels if len(p.points) else None,
            p.box,
            None,
            p.multimask,
        )
        self.stats["decodes"] += 1
        out = []
        for m, s in zip(masks, scores, strict=True):
            seg = rle.encode(m)
            area, bbox = rle.area_and_bbox(seg)
            out.append({"segmentation": seg, "score": float(s), "area": area, "bbox": bbox})
        seconds = round(time.perf_counter() - start, 3)
        return {"masks": out, "best": int(np.argmax(scores)), "embedding": source, "seconds": seconds}

    def _automatic(self, path: Path, settings: dict[str, float]) -> list[dict[str, Any]]:
        from sam_jax import SamAutomaticMaskGenerator

        key = (self.cache_key(path), tuple(sorted(settings.items())))
        if key in self._proposals:
            return self._proposals[key]
        gen_key = key[1]
        generator = self._generators.get(gen_key)
        if generator is None:
            generator = SamAutomaticMaskGenerator(self.model, **settings)
            self._generators[gen_key] = generator
            while len(self._generators) > 2:
                self._generators.popitem(last=False)
        records = generator.generate(self.read_image(path))
        self.stats["automatic"] += 1
        proposals = []
        for r in sorted(records, key=lambda r: -int(r["area"])):
            seg = rle.encode(r["segmentation"])
            point = r.get("point_coords")
            proposals.append(
                {
                    "segmentation": seg,
                    "bbox": [float(v) for v in r["bbox"]],
                    "area": int(r["area"]),
                    "predicted_iou": float(r["predicted_iou"]),
                    "stability_score": float(r["stability_score"]),
                    "point": None if point is None else [float(v) for v in np.asarray(point).reshape(-1)[:2]],
                }
            )
        self._proposals[key] = proposals
        while len(self._proposals) > 4:
            self._proposals.popitem(last=False)
        return proposals

    def _warmup(self, path: Path, point_counts: tuple[int, ...]) -> None:
        self._ensure(path)
        h, w = self.predictor.original_size
        box = np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75], np.float32)
        for n in point_counts:
            pts = np.tile(np.array([[w / 2, h / 2]], np.float32), (n, 1))
            self.predictor.predict(pts, np.ones(n, np.int32), None, None, True)
            self.predictor.predict(pts, np.ones(n, np.int32), box, None, True)
        self.predictor.predict(None, None, box, None, True)
        self.stats["warmups"] += 1
