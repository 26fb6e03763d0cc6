"""Automatic mask generation over a folder of images: input walking, per-image outputs written
atomically, resume, and the split of images across the processes of a ``jax.distributed`` run.

Outputs mirror the reference's ``scripts/amg.py``: per image either one COCO-RLE JSON list of
records (``<name>.json``) or a folder of PNG masks plus ``metadata.csv`` (``<name>/``), and
optionally an overlay (``<name>.overlay.png``). The main output is written last and atomically
(a temporary sibling, then ``os.replace``), so its presence means the image is done: a restarted
run skips it, and a killed run leaves no partial output that could be mistaken for a finished one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.amg.rle import coco_rle_to_mask
from sam_jax.segment import write_png
from sam_jax.visualize import overlay

logger = logging.getLogger("sam_jax.amg")

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
PARTIAL = ".partial"


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go (``base`` + ``.json``, ``/`` or ``.overlay.png``)."""

    source: Path
    base: Path

    def output(self, rle: bool) -> Path:
        """The main output, whose existence marks the image as done."""
        return self.base.with_name(self.base.name + ".json") if rle else self.base

    @property
    def overlay(self) -> Path:
        return self.base.with_name(self.base.name + ".overlay.png")


def list_jobs(input_path: str | os.PathLike, output_dir: str | os.PathLike) -> list[Job]:
    """Every file under ``input_path`` (or that file), sorted, with its output base.

    The folder is walked recursively, hidden entries and ``output_dir`` skipped; outputs mirror
    the relative layout. The base is the name without its extension, as in the reference, unless
    two inputs of one folder share a stem (``a.jpg``, ``a.png``): those keep their extension.
    """
    src, out = Path(input_path), Path(output_dir)
    if not src.exists():
        raise FileNotFoundError(f"--input {src} does not exist")
    if src.is_file():
        return [Job(src, out / src.stem)]
    out_resolved = out.resolve()
    files = []
    for root, dirs, names in os.walk(src):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != out_resolved)
        files.extend(root_path / n for n in sorted(names) if not n.startswith("."))
    rel = [f.relative_to(src) for f in files]
    stems: dict[Path, int] = {}
    for r in rel:
        stems[r.with_suffix("")] = stems.get(r.with_suffix(""), 0) + 1
    return [
        Job(f, out / (r.with_suffix("") if stems[r.with_suffix("")] == 1 else r))
        for f, r in zip(files, rel, strict=True)
    ]


def shard(jobs: Sequence[Job], process_index: int, process_count: int) -> list[Job]:
    """This process's share of ``jobs``: every ``process_count``-th, from ``process_index``."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    return list(jobs[process_index::process_count])


def read_image(path: Path) -> np.ndarray | None:
    """``(H, W, 3)`` uint8 RGB as the reference's ``scripts/amg.py`` reads it (OpenCV, which applies
    EXIF rotation, unlike Pillow), or None."""
    import cv2

    try:
        image = cv2.imread(str(path))
    except cv2.error:
        return None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _replace_atomically(tmp: Path, final: Path) -> None:
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _replace_atomically(tmp, path)


def metadata_row(i: int, record: dict[str, Any]) -> str:
    """One ``metadata.csv`` line, formatted as the reference's ``write_masks_to_folder``."""
    return ",".join(
        [
            str(i),
            str(record["area"]),
            *[str(x) for x in record["bbox"]],
            *[str(x) for x in record["point_coords"][0]],
            str(record["predicted_iou"]),
            str(record["stability_score"]),
            *[str(x) for x in record["crop_box"]],
        ]
    )


def write_mask_folder(records: list[dict[str, Any]], path: Path) -> None:
    """``path/`` with ``<i>.png`` (mask x 255) and ``metadata.csv``, made in a temporary folder and
    renamed into place. ``records`` hold binary masks."""
    tmp = path.with_name(path.name + PARTIAL)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for i, rec in enumerate(records):
        write_png(tmp / f"{i}.png", rec["segmentation"].astype(np.uint8) * 255)
    rows = [METADATA_HEADER] + [metadata_row(i, rec) for i, rec in enumerate(records)]
    (tmp / "metadata.csv").write_text("\n".join(rows))
    _replace_atomically(tmp, path)


def overlay_records(image: np.ndarray, records: list[dict[str, Any]]) -> np.ndarray:
    """``image`` with the records' masks drawn, largest first so small masks stay visible."""
    masks = [r["segmentation"] for r in sorted(records, key=lambda r: -r["area"])]
    masks = [m if isinstance(m, np.ndarray) else coco_rle_to_mask(m) for m in masks]
    return overlay(image, np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), bool))


@dataclass
class Summary:
    """What a :func:`run_jobs` call did, by source path."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)


def run_jobs(
    generate_batch: Callable[[list[np.ndarray]], list[list[dict[str, Any]]]],
    jobs: Sequence[Job],
    *,
    rle: bool,
    write_overlay: bool = False,
    batch_size: int = 1,
    progress: bool = True,
) -> Summary:
    """Generate and write masks for ``jobs`` not already done, ``batch_size`` images at a time.

    ``generate_batch`` is :meth:`SamAutomaticMaskGenerator.generate_batch`, built with
    ``output_mode="coco_rle"`` when ``rle`` else ``"binary_mask"``. Unreadable images are logged
    and skipped; they are retried by the next run.
    """
    from tqdm import tqdm

    summary = Summary()
    todo = []
    for job in jobs:
        (summary.skipped if job.output(rle).exists() else todo).append(job)
    bar = tqdm(total=len(jobs), initial=len(summary.skipped), disable=not progress, unit="img", desc="amg")
    for start in range(0, len(todo), batch_size):
        batch = []
        for job in todo[start : start + batch_size]:
            image = read_image(job.source)
            if image is None:
                logger.warning("could not read %s as an image, skipping", job.source)
                summary.failed.append(job.source)
                bar.update()
            else:
                batch.append((job, image))
        if not batch:
            continue
        for (job, image), records in zip(batch, generate_batch([im for _, im in batch]), strict=True):
            if write_overlay:
                job.overlay.parent.mkdir(parents=True, exist_ok=True)
                write_png(job.overlay, overlay_records(image, records))
            if rle:
                write_atomic(job.output(rle), json.dumps(records).encode())
            else:
                job.base.parent.mkdir(parents=True, exist_ok=True)
                write_mask_folder(records, job.output(rle))
            summary.written.append(job.source)
            bar.update()
    bar.close()
    return summary
