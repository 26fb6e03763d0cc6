"""The reference's CUDA ``sam2.utils.misc.get_connected_components`` in SciPy, so that the reference's
hole filling and sprinkle removal (``SAM2Transforms.postprocess_masks``) runs on CPU in live tests:
``monkeypatch.setattr(sam2.utils.misc, "get_connected_components", scipy_connected_components)``."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def scipy_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected labels and per-pixel component areas of ``(N, 1, H, W)`` binary masks, as the
    CUDA kernel returns them (int32; 0 outside every component)."""
    labels = np.zeros(mask.shape, np.int32)
    areas = np.zeros(mask.shape, np.int32)
    for i in range(mask.shape[0]):
        lab, _ = ndimage.label(mask[i, 0].numpy(), structure=np.ones((3, 3)))
        labels[i, 0] = lab
        areas[i, 0] = np.where(lab > 0, np.bincount(lab.ravel())[lab], 0)
    return torch.from_numpy(labels), torch.from_numpy(areas)
