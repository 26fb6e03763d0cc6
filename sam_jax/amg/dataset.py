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
from sam_jax.io import read_image, write_atomic, write_png
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


def _replace_atomically(tmp: Path, final: Path) -> None:
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


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


# Unreadable inputs named in a summary line; the rest are counted ("and N more").
SUMMARY_PATHS = 3


@dataclass
class Summary:
    """What a :func:`run_jobs` call did, by source path."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)

    def line(self) -> str:
        """``written N, already done M, unreadable K: <first few unreadable paths>``, as ``sam-jax
        amg`` and ``examples/amg_folder.py`` print it."""
        text = f"written {len(self.written)}, already done {len(self.skipped)}, unreadable {len(self.failed)}"
        if self.failed:
            text += ": " + ", ".join(str(p) for p in self.failed[:SUMMARY_PATHS])
            if len(self.failed) > SUMMARY_PATHS:
                text += f" and {len(self.failed) - SUMMARY_PATHS} more"
        return text


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_jobs`. ``summary`` is what was done before it: finished images keep
    their outputs (written atomically, so none is partial), and running again resumes with the rest.
    Its message says so in one line, which ``sam-jax amg`` prints instead of a traceback."""

    def __init__(self, summary: Summary, total: int) -> None:
        left = total - len(summary.written) - len(summary.skipped) - len(summary.failed)
        super().__init__(
            f"{len(summary.written)} images written, {len(summary.skipped)} already done, {left} not done; "
            "run the same command again to resume"
        )
        self.summary = summary


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
    ``output_mode="coco_rle"`` when ``rle`` else ``"binary_mask"``. Unreadable images (not an image,
    truncated or corrupt) are logged, skipped and listed in ``Summary.failed``; the next run retries
    them. ``progress`` shows a bar on stderr (updated lines when stderr is not a terminal).
    Ctrl-C raises :class:`Interrupted`, which carries the summary so far.
    """
    from tqdm import tqdm

    summary = Summary()
    todo = []
    for job in jobs:
        (summary.skipped if job.output(rle).exists() else todo).append(job)
    # The bar is closed (its line ended) on the way out, so an interruption message starts a line.
    bar = tqdm(total=len(jobs), initial=len(summary.skipped), disable=not progress, unit="img", desc="amg")
    try:
        with bar:
            _run_todo(generate_batch, todo, summary, bar, rle=rle, write_overlay=write_overlay, batch_size=batch_size)
    except KeyboardInterrupt:
        raise Interrupted(summary, len(jobs)) from None
    return summary


def _run_todo(
    generate_batch: Callable[[list[np.ndarray]], list[list[dict[str, Any]]]],
    todo: list[Job],
    summary: Summary,
    bar: Any,
    *,
    rle: bool,
    write_overlay: bool,
    batch_size: int,
) -> None:
    """The body of :func:`run_jobs`: read, generate and write ``todo``, recording into ``summary``."""
    for start in range(0, len(todo), batch_size):
        batch = []
        for job in todo[start : start + batch_size]:
            try:
                image = read_image(job.source)
            except ValueError as e:  # not an image, truncated or corrupt (see sam_jax.io)
                logger.warning("could not read %s as an image, skipping it (%s)", job.source, e)
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
