"""Deterministic random weights for the reference state_dict layout (NumPy only, no torch).

The fixtures in ``tests/fixtures`` were made by loading ``random_state_dict(shapes, seed=0)`` into the
unmodified PyTorch reference; tests rebuild the same arrays here and convert them to the JAX layout, so
no weight file has to be committed.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

SHAPES_PATH = Path(__file__).parent / "fixtures" / "state_dict_shapes.json"


def _sample(key: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Draw one tensor; the scale depends on what the key names (see :func:`random_state_dict`)."""
    x = rng.standard_normal(shape, dtype=np.float32)
    if "pos_embed" in key or "rel_pos_" in key:
        return np.float32(0.1) * x
    if "positional_encoding_gaussian_matrix" in key:
        return x
    if len(shape) == 1 and key.endswith(".weight"):
        return np.float32(1.0) + np.float32(0.1) * x
    if key.endswith(".bias"):
        return np.float32(0.1) * x
    if len(shape) >= 2:
        return x / np.float32(np.sqrt(np.prod(shape[1:])))
    raise ValueError(f"no initialisation rule for {key!r} with shape {shape}")


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights for every key of a reference state_dict.

    Each tensor has its own generator, ``np.random.default_rng([seed, zlib.crc32(key)])``, so the result
    does not depend on key order or on which other keys are present. Scales:

    - ``pos_embed`` and ``rel_pos_*``: N(0, 0.1) (the reference initialises these to zero);
    - ``positional_encoding_gaussian_matrix``: N(0, 1), as the reference draws it;
    - 1-D ``*.weight`` (LayerNorm, LayerNorm2d): 1 + 0.1 N(0, 1);
    - ``*.bias``: 0.1 N(0, 1);
    - any other tensor with ndim >= 2: N(0, 1) / sqrt(prod(shape[1:])).
    """
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        out[key] = _sample(key, tuple(shape), rng)
    return out


def load_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Reference state_dict key -> shape for ``tiny``, ``vit_b``, ``vit_l`` or ``vit_h`` (manifest order)."""
    manifest = json.loads(SHAPES_PATH.read_text())
    if name not in manifest:
        raise KeyError(f"no shapes for {name!r} in {SHAPES_PATH.name}; have {sorted(manifest)}")
    return {key: tuple(shape) for key, shape in manifest[name].items()}


def random_tensor(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A deterministic random tensor for state_dict ``key`` (its own generator per key and seed).

    ``pos_embed*``: N(0, 0.1); the prompt encoder's Gaussian matrix: N(0, 1); 1-D ``*.weight``
    (norms): 1 + 0.1 N; ``*.bias`` and other 1-D tensors (layer scale ``gamma``): 0.1 N; anything
    else: N / sqrt(fan_in), fan_in = prod(shape[1:]).
    """
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    x = rng.standard_normal(shape, dtype=np.float32)
    leaf = key.rsplit(".", 1)[-1]
    if leaf.startswith("pos_embed"):
        return np.float32(0.1) * x
    if leaf == "positional_encoding_gaussian_matrix":
        return x
    if len(shape) == 1 and leaf == "weight":
        return np.float32(1.0) + np.float32(0.1) * x
    if len(shape) <= 1:
        return np.float32(0.1) * x
    return x / np.float32(np.sqrt(np.prod(shape[1:])))


def random_sam2_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """:func:`random_tensor` for every key: the weights ``sam2_reference.randomize_`` loads into a
    SAM 2 reference model, rebuilt without torch."""
    return {key: random_tensor(key, tuple(shape), seed) for key, shape in shapes.items()}
