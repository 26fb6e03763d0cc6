"""The rule table between official state_dict names/layouts and sam_jax parameters (every family).

sam_jax modules mirror the official module names, so a parameter path maps to a state_dict key
by renaming its leaf (``kernel``/``scale``/``embedding`` -> ``weight``), and its layout is fixed by
the kind of module that owns it:

==================  ======================  =================================================
module              PyTorch layout          sam_jax layout
==================  ======================  =================================================
Linear              (out, in)               (in, out): transpose
Conv                (O, I, kH, kW)          (kH, kW, I, O)
ConvTranspose       (I, O, kH, kW)          (kH, kW, I, O), spatially flipped (see below)
LayerNorm, Embed    as is                   as is
raw tensors         as is                   as is (pos_embed is already channels-last)
==================  ======================  =================================================

PyTorch's transposed convolution scatters ``x[i] * W[a]`` to ``out[s*i + a]``; lax's (used by
``nnx.ConvTranspose`` with ``transpose_kernel=False``) is a dilated correlation, which reads the
kernel in reverse order. Hence the flip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from sam_jax.models.registry import build_model, family_of

Path = tuple[str | int, ...]
LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


class ConversionError(ValueError):
    """A state_dict does not fit the model: lists every missing, unexpected and mis-shaped key."""


def _identity(a: np.ndarray) -> np.ndarray:
    return a


TO_OURS: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    nnx.Linear: lambda w: w.T,
    nnx.Conv: lambda w: w.transpose(2, 3, 1, 0),
    nnx.ConvTranspose: lambda w: w.transpose(2, 3, 0, 1)[::-1, ::-1],
}
TO_TORCH: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    nnx.Linear: lambda w: w.T,
    nnx.Conv: lambda w: w.transpose(3, 2, 0, 1),
    nnx.ConvTranspose: lambda w: w[::-1, ::-1].transpose(2, 3, 0, 1),
}


def torch_key(path: Path) -> str:
    """Official state_dict key of a sam_jax parameter path."""
    *module, leaf = (str(p) for p in path)
    return ".".join([*module, LEAF_TO_TORCH.get(leaf, leaf)])


def _owner_types(model: nnx.Module) -> dict[Path, type]:
    return {tuple(path): type(node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}


def _abstract(config: Any) -> nnx.Module:
    """The model ``config`` describes (any family: its registry builder), without allocating it."""
    return nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))


def param_table(config: Any) -> dict[str, tuple[Path, tuple[int, ...], type]]:
    """``{torch key: (our path, torch shape, owning module type)}`` for every tensor of the model."""
    return dict(_param_table(config))


@functools.lru_cache(maxsize=8)
def _param_table(config: Any) -> dict[str, tuple[Path, tuple[int, ...], type]]:
    # Cached: tracing the abstract model takes about a second for vit_b, and a conversion needs it twice.
    model = _abstract(config)
    owners = _owner_types(model)
    table = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(path)
        owner = owners.get(path[:-1], type(None))
        shape = tuple(var.shape)
        if path[-1] == "kernel" and owner in TO_TORCH:
            shape = TO_TORCH[owner](np.empty(shape, np.bool_)).shape
        table[torch_key(path)] = (path, shape, owner)
    return table


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Official state_dict keys and shapes of the model ``config`` describes."""
    return {k: shape for k, (_, shape, _) in param_table(config).items()}


def check_keys(
    given: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    header: str,
    *,
    missing_extra: tuple[str, ...] = (),
) -> None:
    """Raise :class:`ConversionError` with ``header`` and every missing, unexpected or mis-shaped
    key of ``given`` against ``expected`` shapes (``missing_extra``: more "missing" lines)."""
    missing = sorted(set(expected) - set(given)) + list(missing_extra)
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k}: expected {expected[k]}, got {tuple(given[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != expected[k]
    )
    if missing or unexpected or wrong:
        lines = [header]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"{title} ({len(items)}):\n  " + "\n  ".join(shown))
        raise ConversionError("\n".join(lines))


def check_state_dict(state_dict: Mapping[str, np.ndarray], config: Any, *, source: str = "checkpoint") -> None:
    """Raise :class:`ConversionError` naming every missing, unexpected or mis-shaped key."""
    expected = expected_shapes(config)
    model = f"{family_of(config).title} {config.name}"
    check_keys(
        state_dict,
        expected,
        f"{source} does not match {model} ({len(expected)} tensors expected, {len(state_dict)} given)",
    )


def to_params(state_dict: Mapping[str, np.ndarray], config: Any, *, source: str = "checkpoint") -> dict:
    """Official-layout state_dict -> nested pure dict of sam_jax parameters (float32 NumPy).

    Strict: every key must be present with its exact shape, and nothing else may be given.
    """
    check_state_dict(state_dict, config, source=source)
    nested: dict = {}
    for key, (path, _, owner) in param_table(config).items():
        value = np.asarray(state_dict[key], dtype=np.float32)
        if path[-1] == "kernel":
            value = TO_OURS.get(owner, _identity)(value)
        node = nested
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(value)
    return nested


def to_state_dict(params: dict, config: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_params`: sam_jax parameters -> official-layout state_dict."""
    out = {}
    for key, (path, _, owner) in param_table(config).items():
        value = params
        for p in path:
            value = value[p]
        value = np.asarray(value)
        if path[-1] == "kernel":
            value = TO_TORCH.get(owner, _identity)(value)
        out[key] = np.ascontiguousarray(value)
    return out
