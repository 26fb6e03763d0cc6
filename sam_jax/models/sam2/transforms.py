"""Host-side geometry of SAM 2's ``SAM2Transforms`` (reference ``sam2/utils/transforms.py``): the
image squashed to the model's square input, point/box coordinates into that frame. NumPy in,
NumPy out; the mask side (bilinear back to the original size) is :meth:`sam_jax.core.resize.Resize.direct`.

Unlike SAM 1 (longest side to 1024, aspect kept, zero padding), SAM 2 resizes both sides to the
model's ``image_size`` (``Resize((1024, 1024))`` on the ``ToTensor`` image in [0, 1]; torchvision's
tensor resize is bilinear *with* antialiasing), so a canvas is the whole image and has no padding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

_F32 = np.float32


@functools.lru_cache(maxsize=32)
def antialias_resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of PyTorch's ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``
    along one axis: ``(out_size,)`` first input index and ``(out_size, K)`` float32 weights.

    As ATen's CPU kernel (``_compute_indices_min_size_weights_aa``): a triangle filter stretched by
    the scale when downsampling (support ``scale``), plain bilinear when upsampling, each row's
    weights normalised to sum 1. Float32/float64 steps follow the C++ (float ``scalar_t``, double
    literals), so the weights are torch's.
    """
    scale = _F32(in_size) / _F32(out_size)
    support = _F32(scale if scale >= 1.0 else 1.0)  # (interp_size / 2) * scale, interp_size 2
    invscale = _F32(1.0 / np.float64(scale)) if scale >= 1.0 else _F32(1.0)
    width = int(np.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, width), _F32)
    for i in range(out_size):
        center = _F32(np.float64(scale) * (i + 0.5))
        xmin = max(int(np.float64(center - support) + 0.5), 0)
        xsize = min(int(np.float64(center + support) + 0.5), in_size) - xmin
        j = np.arange(xsize)
        t = np.abs(((j + xmin - np.float64(center)) + 0.5) * np.float64(invscale)).astype(_F32)
        w = np.where(t < 1, _F32(1) - t, _F32(0)).astype(_F32)
        total = _F32(0)
        for v in w:  # sequential float32 sum, as the kernel
            total = _F32(total + v)
        if total != 0:
            w = (w / total).astype(_F32)
        starts[i] = xmin
        weights[i, :xsize] = w
    return starts, weights


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """Resample ``x`` (float32) along ``axis`` with :func:`antialias_resize_taps`, accumulating
    the taps in float32 in order (taps past the input's end have weight 0 and are clamped)."""
    n = x.shape[axis]
    if n == out_size:  # torchvision returns the image unchanged; the weights would be the identity
        return x
    starts, weights = antialias_resize_taps(n, out_size)
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((out_size, *x.shape[1:]), _F32)
    shape = (out_size,) + (1,) * (x.ndim - 1)
    for k in range(weights.shape[1]):
        idx = np.minimum(starts + k, n - 1)
        out += x[idx] * weights[:, k].reshape(shape)
    return np.moveaxis(out, 0, axis)


def squash_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(S, S, 3)`` float32 in [0, 1] (``S = image_size``): ``ToTensor``
    then ``Resize((S, S))`` (antialiased bilinear; width first, then height, as ATen's separable
    kernel). Normalisation with the ImageNet statistics happens on the device (``Sam2.embed``)."""
    x = image.astype(_F32) / _F32(255.0)
    x = _resize_axis(x, 1, image_size)
    return np.ascontiguousarray(_resize_axis(x, 0, image_size))


def canvas_batch(images: Sequence[np.ndarray], image_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``images`` squashed (:func:`squash_image`), padded with blank canvases to ``size`` (to reuse
    compiled programs and split evenly over devices): ``(size, S, S, 3)`` float32 and
    ``input_sizes`` ``(size, 2)`` int32 (always ``S``: a SAM 2 canvas is the whole image)."""
    if size < len(images):
        raise ValueError(f"batch size {size} is smaller than the {len(images)} images")
    batch = np.zeros((size, image_size, image_size, 3), _F32)
    for i, im in enumerate(images):
        batch[i] = squash_image(im, image_size)
    return batch, np.full((size, 2), image_size, np.int32)


def transform_coords(
    coords: np.ndarray, original_size: tuple[int, int], image_size: int, *, normalize: bool = True
) -> np.ndarray:
    """``(..., 2)`` xy -> the model-input frame (``SAM2Transforms.transform_coords``): pixels of the
    original ``(H, W)`` image when ``normalize``, else coordinates already relative to it (in
    [0, 1]); either way scaled to ``image_size``. Float32 steps as the reference's tensors."""
    c = np.array(coords, dtype=_F32, copy=True)
    if normalize:
        h, w = original_size
        c[..., 0] = c[..., 0] / _F32(w)
        c[..., 1] = c[..., 1] / _F32(h)
    return (c * _F32(image_size)).astype(_F32)


def transform_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], image_size: int, *, normalize: bool = True
) -> np.ndarray:
    """``(B, 4)`` xyxy -> ``(B, 2, 2)`` corner points in the model-input frame (``transform_boxes``)."""
    boxes = np.asarray(boxes, _F32).reshape(-1, 2, 2)
    return transform_coords(boxes, original_size, image_size, normalize=normalize)
