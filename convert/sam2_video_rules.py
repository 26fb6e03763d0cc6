"""The rule table between SAM 2's video-only tensors (``sam2==1.1.0`` names/layouts) and
:class:`~sam_jax.models.sam2.video_model.Sam2VideoParts`, and the loader of ``DIR/video.safetensors``.

The converter keeps every video-only tensor of an official checkpoint (:data:`sam2_rules.KEEP_FOR_VIDEO`:
``memory_attention.*``, ``memory_encoder.*``, ``maskmem_tpos_enc``, ``no_mem_pos_enc``, ``no_obj_ptr``,
``no_obj_embed_spatial``, ``obj_ptr_proj.*``, ``obj_ptr_tpos_proj.*``, ``mask_downsample.*``) under its
official name in ``DIR/video.safetensors``. :class:`Sam2VideoParts` mirrors ``SAM2Base``'s attribute
names, so a parameter path is the state_dict key with the leaf renamed (``kernel``/``scale`` ->
``weight``), and the layout follows the owning module as everywhere else:

==========================  =====================  ===========================================
tensor                      PyTorch layout         sam_jax layout
==========================  =====================  ===========================================
Linear weight               (out, in)              (in, out)
Conv weight (also depthwise (O, I/groups, kH, kW)  (kH, kW, I/groups, O)
``dwconv``, ``mask_downsample``)
LayerNorm(2d), ``gamma``,   as is                  as is
``maskmem_tpos_enc`` ...
==========================  =====================  ===========================================

NumPy/JAX only (``safetensors.numpy``): the video predictor loads with this module, without torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from sam_jax.convert import sam2_rules
from sam_jax.convert.rules import TO_OURS, TO_TORCH, ConversionError, check_keys, torch_key
from sam_jax.models.sam2.config import Sam2Config
from sam_jax.models.sam2.video_model import Sam2VideoParts

Path_ = tuple[str | int, ...]
VIDEO_FILE = sam2_rules.VIDEO_FILE


def abstract_video_parts(config: Sam2Config) -> Sam2VideoParts:
    """:class:`Sam2VideoParts` of ``config`` with ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    return nnx.eval_shape(lambda: Sam2VideoParts(config, rngs=sam2_rules._ShapeOnlyRngs()))


@functools.lru_cache(maxsize=8)
def _param_table(config: Sam2Config) -> dict[str, tuple[Path_, tuple[int, ...], type | None]]:
    model = abstract_video_parts(config)
    owners = {tuple(p): type(n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Module)}
    table = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(path)
        owner = owners.get(path[:-1]) if path[-1] == "kernel" else None
        owner = owner if owner in TO_TORCH else None
        shape = TO_TORCH[owner](np.empty(var.shape, np.bool_)).shape if owner else tuple(var.shape)
        key = torch_key(path)
        if key in table:
            raise AssertionError(f"two parameters map to {key!r}: {table[key][0]} and {path}")
        table[key] = (path, tuple(shape), owner)
    return table


def param_table(config: Sam2Config) -> dict[str, tuple[Path_, tuple[int, ...], type | None]]:
    """``{official key: (our path, official shape, owning module type or None: as is)}``."""
    return dict(_param_table(config))


def expected_shapes(config: Sam2Config) -> dict[str, tuple[int, ...]]:
    """Official keys and shapes of every video-only tensor of ``config``'s ``SAM2Base``."""
    return {k: shape for k, (_, shape, _) in _param_table(config).items()}


def check_state_dict(video: Mapping[str, np.ndarray], config: Sam2Config, *, source: str = "video tensors") -> None:
    """Raise :class:`ConversionError` naming every missing, unexpected or mis-shaped video tensor.

    ``video`` holds only video-only keys (``sam2_rules.split_state_dict(...)[1]`` or the
    contents of ``video.safetensors``)."""
    expected = expected_shapes(config)
    header = f"{source} do not match SAM 2 {config.name}'s video model ({len(expected)} tensors expected)"
    check_keys(video, expected, header)


def to_params(video: Mapping[str, np.ndarray], config: Sam2Config, *, source: str = "video tensors") -> dict:
    """Official video tensors -> nested pure dict of :class:`Sam2VideoParts` parameters (float32 NumPy).
    Strict: every tensor present with its exact shape, nothing else."""
    check_state_dict(video, config, source=source)
    nested: dict = {}
    for key, (path, _, owner) in _param_table(config).items():
        value = np.asarray(video[key], dtype=np.float32)
        if owner is not None:
            value = TO_OURS[owner](value)
        node = nested
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(value)
    return nested


def to_state_dict(params: Mapping, config: Sam2Config) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_params`."""
    out = {}
    for key, (path, _, owner) in _param_table(config).items():
        value = params
        for p in path:
            value = value[p]
        value = np.asarray(value)
        out[key] = np.ascontiguousarray(TO_TORCH[owner](value) if owner is not None else value)
    return out


def build_video_parts(config: Sam2Config, params: Mapping | None = None, *, seed: int = 0) -> Sam2VideoParts:
    """:class:`Sam2VideoParts` of ``config`` filled from ``params`` (:func:`to_params`' nested dict;
    a missing, extra or mis-shaped leaf raises), or random weights from ``seed`` without."""
    if params is None:
        return Sam2VideoParts(config, rngs=nnx.Rngs(seed))
    return sam2_rules.fill_abstract(abstract_video_parts(config), params, f"SAM 2 {config.name}'s video parts")


def load_video_parts(directory: str | os.PathLike, config: Sam2Config) -> Sam2VideoParts:
    """The video parts of a converted SAM 2 directory: ``directory/video.safetensors`` (official
    names and layouts, as ``sam-jax convert`` keeps them), checked strictly against ``config``."""
    from safetensors.numpy import load_file

    path = Path(directory) / VIDEO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the video model needs the video tensors that converting an official "
            f"SAM 2 checkpoint keeps there"
        )
    video = load_file(str(path))
    return build_video_parts(config, to_params(video, config, source=str(path)))


__all__ = [
    "VIDEO_FILE",
    "ConversionError",
    "abstract_video_parts",
    "build_video_parts",
    "check_state_dict",
    "expected_shapes",
    "load_video_parts",
    "param_table",
    "to_params",
    "to_state_dict",
]
