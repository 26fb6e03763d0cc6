"""Building models of any family: random init, from a sam_jax checkpoint, and the reference-style
``sam_model_registry``."""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sam_jax import checkpoint
from sam_jax.models.registry import build_model, family_of, get_config
from sam_jax.models.sam.model import Sam
from sam_jax.runtime.precision import abstract_state, resolve_dtype, set_matmul_dtype


def build_sam(config: Any, *, params: dict | None = None, seed: int = 0) -> nnx.Module:
    """A model of ``config`` (a config of any family, or its registry name) with random weights,
    or with ``params`` (a nested pure dict).

    ``params`` must match the model exactly (same paths and shapes).
    """
    if isinstance(config, str):
        config = get_config(config)
    if params is None:
        return build_model(config, nnx.Rngs(seed))
    # Build the structure without running the initialisers, then fill every leaf.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(config, nnx.Rngs(seed))))
    want = jax.tree_util.tree_map(lambda v: tuple(v.shape), nnx.to_pure_dict(state))
    got = jax.tree_util.tree_map(lambda v: tuple(v.shape), params)
    if want != got:
        raise ValueError(f"params do not match {family_of(config).title} {config.name}: {_diff(want, got)}")
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def _diff(want: dict, got: dict) -> str:
    fw = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    fg = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    missing = [jax.tree_util.keystr(k) for k in fw if k not in fg][:5]
    extra = [jax.tree_util.keystr(k) for k in fg if k not in fw][:5]
    wrong = [f"{jax.tree_util.keystr(k)} {fw[k]} vs {fg[k]}" for k in fw if k in fg and fw[k] != fg[k]][:5]
    return f"missing {missing}, unexpected {extra}, wrong shape {wrong}"


def load_sam(directory: str | os.PathLike, *, dtype: str | jnp.dtype | None = None) -> nnx.Module:
    """Load a model written by ``sam-jax convert`` (or :func:`save_sam`), of the family its
    ``config.json`` names. Needs no torch.

    ``dtype``: ``"float32"`` (the default, also for None) or ``"bfloat16"``, the mixed-precision
    mode of :func:`sam_jax.runtime.precision.cast_model` (bf16 weights and matmul operands, fp32
    accumulation and everything else; read as bf16, so no fp32 copy is made). Anything else
    raises ValueError.
    """
    dtype = resolve_dtype(dtype)  # checked before the (possibly large) read
    config = checkpoint.load_config(directory)
    abstract = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
    # Read straight into the parameters' dtype (cast on the host as cast_params would, bit for bit).
    model = build_sam(config, params=checkpoint.load_params(directory, abstract_state(abstract, dtype)))
    model = model if dtype == jnp.float32 else set_matmul_dtype(model, dtype)
    _note_video_parts(model, directory)
    return model


# SAM 2's video parts stay outside the image model's graph (its parameters, save_sam and the image
# predictors are unchanged): load_sam notes where they are, video_parts_of loads them on first use.
_VIDEO_SOURCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VIDEO_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _note_video_parts(model: nnx.Module, directory: str | os.PathLike) -> None:
    if family_of(model.config).tag != "sam2":
        return
    from sam_jax.convert.sam2_rules import VIDEO_FILE

    if (Path(directory) / VIDEO_FILE).is_file():
        _VIDEO_SOURCES[model] = Path(directory)


def video_parts_of(model: nnx.Module) -> nnx.Module | None:
    """The :class:`~sam_jax.models.sam2.video_model.Sam2VideoParts` of a SAM 2 model that
    :func:`load_sam` read from a directory holding ``video.safetensors`` (loaded on first use, then
    kept while the model lives); None for any other model."""
    if model in _VIDEO_PARTS:
        return _VIDEO_PARTS[model]
    directory = _VIDEO_SOURCES.get(model)
    if directory is None:
        return None
    from sam_jax.convert.sam2_video_rules import load_video_parts

    _VIDEO_PARTS[model] = load_video_parts(directory, model.config)
    return _VIDEO_PARTS[model]


def save_sam(model: nnx.Module, directory: str | os.PathLike, *, force: bool = False) -> None:
    """Write ``model`` as a sam_jax checkpoint directory."""
    checkpoint.save_params(directory, model.config, nnx.to_pure_dict(nnx.state(model)), force=force)


def _registry_entry(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None) -> Sam:
        """As ``segment_anything.sam_model_registry[name](checkpoint)``: a sam_jax checkpoint
        directory, or random weights when ``checkpoint`` is None."""
        if checkpoint is None:
            return build_sam(name)
        model = load_sam(checkpoint)
        if model.config.name != name:
            raise ValueError(f"checkpoint {checkpoint} holds SAM {model.config.name}, not {name}")
        return model

    return functools.update_wrapper(build, build, updated=())


sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": _registry_entry("vit_h"),
    "vit_h": _registry_entry("vit_h"),
    "vit_l": _registry_entry("vit_l"),
    "vit_b": _registry_entry("vit_b"),
}
