"""Random-access sources of ``{"image": (H, W, 3) uint8, "masks": (K, H, W) bool}`` examples.

Each is a grain ``RandomAccessDataSource`` (``__len__`` and ``__getitem__``), read lazily, so grain
can shuffle, shard and checkpoint a pipeline over it (see :mod:`sam_jax.data.pipeline`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.data.synthetic import ShapesConfig, shapes_example
from sam_jax.io import read_image, read_mask

# One example: ``image`` (or a cached ``features`` dict of arrays), ``masks``, and what the pipeline adds.
Example = dict[str, Any]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class SyntheticShapes:
    """``length`` scenes of :func:`sam_jax.data.synthetic.shapes_example` from stream ``seed``."""

    def __init__(self, cfg: ShapesConfig, *, seed: int, length: int = 2**31 - 1) -> None:
        self.cfg, self.seed, self.length = cfg, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Example:
        return shapes_example(self.seed, int(index), self.cfg)

    def __repr__(self) -> str:
        return f"SyntheticShapes(seed={self.seed}, length={self.length}, cfg={self.cfg})"


class MaskFolder:
    """Images with PNG masks, MedSAM-style::

        ROOT/images/NAME.{png,jpg,jpeg,tif,tiff,bmp}
        ROOT/masks/NAME.png      a label image: 0 is background, every other value one object
        ROOT/masks/NAME/*.png    or a folder of binary masks, one object each (nonzero inside)

    Images without a mask are an error (listed), so a typo does not silently shrink the data.
    """

    def __init__(self, root: str | os.PathLike, *, images: str = "images", masks: str = "masks") -> None:
        self.root = Path(root)
        self.image_dir, self.mask_dir = self.root / images, self.root / masks
        if not self.image_dir.is_dir() or not self.mask_dir.is_dir():
            raise FileNotFoundError(f"{self.root} must contain {images}/ and {masks}/ folders")
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        missing = [p.name for p in self.images if not self._mask_path(p).exists()]
        if missing:
            raise FileNotFoundError(f"no mask (masks/NAME.png or masks/NAME/) for {len(missing)} images: {missing[:5]}")
        if not self.images:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.image_dir}")

    def _mask_path(self, image: Path) -> Path:
        label = self.mask_dir / f"{image.stem}.png"
        return label if label.exists() else self.mask_dir / image.stem

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Example:
        image = read_image(self.images[index])
        path = self._mask_path(self.images[index])
        if path.is_dir():
            masks = [read_mask(p) > 0 for p in sorted(path.glob("*.png"))]
            masks = np.stack(masks) if masks else None
        else:
            labels = read_mask(path)
            ids = np.unique(labels)
            masks = labels[None] == ids[ids != 0][:, None, None]
        if masks is None or masks.shape[1:] != image.shape[:2]:
            got = None if masks is None else masks.shape[1:]
            raise ValueError(f"masks of {self.images[index].name} must be {image.shape[:2]}, got {got}")
        return {"image": image, "masks": masks}

    def __repr__(self) -> str:
        return f"MaskFolder({str(self.root)!r}, {len(self)} images)"


class CocoInstances:
    """COCO-format instance annotations (polygons or RLE, decoded by pycocotools); crowd
    annotations and images without any other annotation are skipped."""

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike) -> None:
        from pycocotools.coco import COCO  # optional dependency, only needed for COCO data

        self.coco = COCO(str(annotation_file))
        self.image_dir = Path(image_dir)
        self.ids = [i for i in sorted(self.coco.getImgIds()) if self.coco.getAnnIds(imgIds=i, iscrowd=False)]
        if not self.ids:
            raise ValueError(f"{annotation_file} has no image with a non-crowd annotation")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Example:
        info = self.coco.loadImgs(self.ids[index])[0]
        image = read_image(self.image_dir / info["file_name"])
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"], iscrowd=False))
        masks = np.stack([self.coco.annToMask(a).astype(bool) for a in anns])
        return {"image": image, "masks": masks}

    def __repr__(self) -> str:
        return f"CocoInstances({len(self)} images in {str(self.image_dir)!r})"
