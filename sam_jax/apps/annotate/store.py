"""Annotations on disk: one COCO-style JSON per image, written atomically after every change, and
the folder-wide COCO dataset export.

Per image ``<output>/<image name>.json`` is itself a COCO dataset with one image (pycocotools'
``COCO()`` loads it); each annotation carries, beyond COCO's ``segmentation`` (RLE), ``area``,
``bbox`` (XYWH) and ``category_id``, the tool's fields: ``name``, ``label``, ``score``, ``prompts``
(points/point_labels/box in image pixels, the chosen ``mask_index``, ``multimask``), ``source``
(``prompt``, ``auto`` or ``manual``), ``edited`` (brush/eraser used) and ``hidden``. The key
``sam_jax_annotate`` holds the document ``revision`` (for lost-update detection) and ``done``.
With ``save_png`` each mask is also written as ``<output>/<image name>.masks/<id>.png`` (0/255).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from sam_jax.apps.annotate import rle, validation
from sam_jax.apps.annotate.paths import ImageFolder, OutputFolder, atomic_write, remove_stale

FORMAT = "sam-jax-annotate/1"
META = "sam_jax_annotate"


class StoreError(ValueError):
    """A request the store refuses; ``status`` is 409 (stale revision) or 422 (bad file on disk)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class AnnotationStore:
    """Reads and writes the annotations of the images of ``images`` under ``output``.

    ``labels`` orders the categories (labels found in files but not listed come after them).
    Thread-safe: saves of one store are serialised by a lock.
    """

    def __init__(
        self,
        images: ImageFolder,
        output: OutputFolder,
        labels: Sequence[str],
        *,
        save_png: bool = False,
        model_name: str = "",
    ) -> None:
        self.images = images
        self.output = output
        self.labels = list(dict.fromkeys(labels))
        self.save_png = save_png
        self.model_name = model_name
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[tuple[int, int] | None, tuple[int, int]]] = {}
        self._summaries: dict[str, tuple[tuple[int, int] | None, dict[str, Any]]] = {}

    # --- images ---------------------------------------------------------------------------------

    def image_size(self, name: str) -> tuple[int, int]:
        """``(H, W)`` of image ``name`` from its header (cached); ValueError if unreadable."""
        path = self.images.resolve(name)
        key = _stat_key(path)
        cached = self._sizes.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise StoreError(f"cannot read image {name!r}: {e}", 422) from e
        self._sizes[name] = (key, (h, w))
        return h, w

    # --- one image ------------------------------------------------------------------------------

    def file_for(self, name: str) -> Path:
        return self.output.path(name, ".json")

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.file_for(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"annotation file {path} is not valid JSON ({e}); fix or move it", 422) from e
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise StoreError(f"annotation file {path} is not a COCO-style file of this tool; fix or move it", 422)
        return data

    def load(self, name: str) -> dict[str, Any]:
        """The document of image ``name`` as the page edits it: ``{"name", "height", "width",
        "revision", "done", "objects": [...]}`` (revision 0 and no objects when nothing is saved)."""
        h, w = self.image_size(name)
        data = self._read(name)
        doc = {"name": name, "height": h, "width": w, "revision": 0, "done": False, "objects": []}
        if data is None:
            return doc
        revision, done = _meta(data)
        # Files from other COCO tools lack "label": fall back to the category's name.
        cats = {c.get("id"): c.get("name") for c in data.get("categories") or [] if isinstance(c, dict)}
        try:
            objects = [
                validation.annotation_object(
                    {"label": cats.get(a.get("category_id")), **{k: a[k] for k in _OBJECT_KEYS if k in a}}, (h, w), i
                )
                for i, a in enumerate(data["annotations"])
            ]
        except (ValueError, AttributeError) as e:
            raise StoreError(f"annotation file {self.file_for(name)} has a bad annotation: {e}", 422) from e
        doc.update(revision=revision, done=done, objects=objects)
        return doc

    def save(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Check and write the document ``body`` (see :func:`validation.document`) for image ``name``.

        ``body["revision"]`` must be the revision on disk (else :class:`StoreError` 409: another tab
        or process saved in between); returns ``{"revision": new, "objects": n, "done": bool}``.
        """
        h, w = self.image_size(name)
        doc = validation.document(body, (h, w))
        with self._lock:
            current, _ = _meta(self._read(name))
            if doc["revision"] != current:
                raise StoreError(
                    f"the annotations of {name!r} were saved elsewhere (revision {current}, this page has "
                    f"{doc['revision']}); reload the page",
                    409,
                )
            revision = current + 1
            coco = self._coco_file(name, (h, w), doc["objects"], revision=revision, done=doc["done"])
            path = self.output.path(name, ".json", create_parents=True)
            atomic_write(path, (json.dumps(coco, indent=1) + "\n").encode())
            if self.save_png:
                self._write_pngs(name, doc["objects"])
        return {"revision": revision, "objects": len(doc["objects"]), "done": doc["done"]}

    def _categories(self, extra: Sequence[str]) -> list[dict[str, Any]]:
        names = list(dict.fromkeys([*self.labels, *extra]))
        return [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]

    def _coco_file(
        self, name: str, size: tuple[int, int], objects: list[dict[str, Any]], *, revision: int, done: bool
    ) -> dict[str, Any]:
        categories = self._categories([o["label"] for o in objects])
        ids = {c["name"]: c["id"] for c in categories}
        annotations = []
        for o in objects:
            area, bbox = rle.area_and_bbox(o["segmentation"])
            annotations.append(
                {
                    "id": o["id"],
                    "image_id": 1,
                    "category_id": ids[o["label"]],
                    "segmentation": o["segmentation"],
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                    **{k: o[k] for k in _OBJECT_KEYS if k not in ("id", "segmentation")},
                }
            )
        return {
            "info": {"description": "sam-jax annotate", "format": FORMAT, "date_created": _now()},
            "images": [{"id": 1, "file_name": name, "height": size[0], "width": size[1]}],
            "categories": categories,
            "annotations": annotations,
            META: {"revision": revision, "done": done, "model": self.model_name},
        }

    def _write_pngs(self, name: str, objects: list[dict[str, Any]]) -> None:
        folder = self.output.path(name, ".masks", create_parents=True)
        folder.mkdir(exist_ok=True)
        keep = []
        for o in objects:
            buf = io.BytesIO()
            Image.fromarray(rle.decode(o["segmentation"]).astype("uint8") * 255).save(buf, format="PNG")
            keep.append(f"{o['id']}.png")
            atomic_write(folder / keep[-1], buf.getvalue(), durable=False)
        remove_stale(folder, keep, "*.png")

    def summary(self, name: str) -> dict[str, Any]:
        """``{"objects": n, "done": bool}`` of image ``name`` (cached on the file's mtime and size)."""
        path = self.file_for(name)
        key = _stat_key(path)
        cached = self._summaries.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        out = {"objects": 0, "done": False}
        if key is not None:
            try:
                data = self._read(name) or {"annotations": []}
                out = {"objects": len(data["annotations"]), "done": _meta(data)[1]}
            except StoreError:
                out = {"objects": 0, "done": False, "error": "unreadable annotation file"}
        self._summaries[name] = (key, out)
        return out

    # --- the whole folder -----------------------------------------------------------------------

    def export(self, names: Sequence[str] | None = None, *, annotated_only: bool = False) -> dict[str, Any]:
        """One COCO dataset for ``names`` (default: every image of the folder).

        Images without annotations are listed too (negatives) unless ``annotated_only``; annotation
        ids are renumbered 1..N; categories are the labels (``self.labels`` first).
        """
        names = self.images.names() if names is None else list(names)
        images, per_image, extra = [], [], []
        for name in names:
            doc = self.load(name)
            if annotated_only and not doc["objects"]:
                continue
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "height": doc["height"], "width": doc["width"]})
            per_image.append((image_id, doc))
            extra += [o["label"] for o in doc["objects"]]
        categories = self._categories(extra)
        ids = {c["name"]: c["id"] for c in categories}
        annotations = []
        for image_id, doc in per_image:
            for o in doc["objects"]:
                area, bbox = rle.area_and_bbox(o["segmentation"])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": ids[o["label"]],
                        "segmentation": o["segmentation"],
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                        "score": o["score"],
                        "attributes": {"name": o["name"], "source": o["source"], "object_id": o["id"]},
                    }
                )
        info = {"description": "sam-jax annotate export", "format": FORMAT, "date_created": _now()}
        return {"info": info, "images": images, "categories": categories, "annotations": annotations}

    def write_export(self, path: str | os.PathLike, *, annotated_only: bool = False) -> dict[str, Any]:
        """Write :meth:`export` to ``path`` atomically; returns counts."""
        data = self.export(annotated_only=annotated_only)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data).encode())
        return {k: len(data[k]) for k in ("images", "categories", "annotations")}


def _meta(data: dict[str, Any] | None) -> tuple[int, bool]:
    """``(revision, done)`` of a file read by ``_read`` (``(0, False)`` for none or a foreign file)."""
    meta = (data or {}).get(META)
    if not isinstance(meta, dict):
        return 0, False
    revision = meta.get("revision", 0)
    revision = revision if isinstance(revision, int) and not isinstance(revision, bool) and revision >= 0 else 0
    return revision, meta.get("done") is True


_OBJECT_KEYS = ("id", "name", "label", "hidden", "source", "edited", "score", "prompts", "segmentation")
