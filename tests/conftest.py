"""Shared test set-up: fp32 at highest matmul precision, fixtures and fixture-weight models."""

from __future__ import annotations

import functools
import gc
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

from sam_jax.build import build_sam  # noqa: E402
from sam_jax.convert import rules  # noqa: E402
from sam_jax.models.sam.config import get_config  # noqa: E402

from reference_weights import load_shapes, random_state_dict  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS_SEED = 0


@functools.cache
def fixture_arrays(name: str) -> dict[str, np.ndarray]:
    """All arrays of ``tests/fixtures/<name>.npz``."""
    with np.load(FIXTURES / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


@functools.cache
def fixture_state_dict(name: str) -> dict[str, np.ndarray]:
    """The random official-layout state_dict the fixtures of ``name`` were made with."""
    return random_state_dict(load_shapes(name), seed=WEIGHTS_SEED)


@functools.cache
def fixture_model(name: str):
    """sam_jax model holding the fixture weights of ``name`` (converted by the rule table)."""
    cfg = get_config(name)
    return build_sam(cfg, params=rules.to_params(fixture_state_dict(name), cfg))


def _memory_map_use() -> tuple[int, int] | None:
    """``(mappings, limit)`` of this process (Linux: ``/proc/self/maps``, ``vm.max_map_count``), else None."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f), limit
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After a test module, drop JAX's compiled programs once this process's memory mappings pass half
    the kernel's limit. Each CPU executable maps about 3 regions, held while JAX's caches hold it;
    the whole suite compiles enough programs to pass ``vm.max_map_count`` (65530), where the next
    compilation aborts the process inside XLA (CI, exit 134, in test_train after the video tests)."""
    yield
    use = _memory_map_use()
    if use is not None and use[0] > use[1] // 2:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def tiny_model():
    return fixture_model("tiny")


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def postprocess_masks(masks, rows, cols):
    """Low-res logits ``(..., m, m)`` resized by dense matrices ``(H, m)``, ``(W, m)`` from
    :func:`sam_jax.core.resize.postprocess_matrices` (the direct form the banded resize replaces)."""
    hp = jax.lax.Precision.HIGHEST
    x = jax.numpy.einsum("...ij,wj->...iw", masks, cols, precision=hp)
    return jax.numpy.einsum("hi,...iw->...hw", rows, x, precision=hp)
