"""The rule table between SAM 2 / 2.1 state_dict names/layouts (``sam2==1.1.0``) and sam_jax parameters.

The image model (:class:`sam_jax.models.sam2.model.Sam2`) is three parts and a tensor, named as in
``SAM2Base``: ``image_encoder`` (Hiera trunk + FPN neck), ``sam_prompt_encoder`` (SAM 1's prompt
encoder), ``sam_mask_decoder`` and ``no_mem_embed``. sam_jax modules
mirror the reference's module names, so a parameter path maps to a state_dict key by renaming its
leaf (``kernel``/``scale``/``embedding`` -> ``weight``) plus one module rename, and the layout is
fixed by the kind of module that owns it (as for SAM 1, :mod:`sam_jax.convert.rules`):

==========================  =====================  ===========================================
tensor                      PyTorch layout         sam_jax layout
==========================  =====================  ===========================================
Linear weight               (out, in)              (in, out)
Conv weight                 (O, I, kH, kW)         (kH, kW, I, O)
ConvTranspose weight        (I, O, kH, kW)         (kH, kW, I, O), spatially flipped
``trunk.pos_embed*``        (1, C, h, w)           (1, h, w, C): channels-last like activations
LayerNorm, Embed, buffers   as is                  as is
==========================  =====================  ===========================================

The one rename: the decoder transformer's MLP is SAM 1's ``MLPBlock`` (``mlp.lin1``/``lin2``) where
sam2 uses its ``MLP`` (``mlp.layers.0``/``layers.1``); same computation (two Linears, ReLU).

Keys of the video model (memory attention, memory encoder, object pointers, ...) are not used by
the image model; :data:`KEEP_FOR_VIDEO` names their top-level modules so that a converter can keep
them aside (:func:`split_state_dict`) instead of rejecting them; :func:`check_video_state_dict`
checks what of them the config fixes. ``no_mem_embed`` belongs to the image model although it
lives outside the three parts: with ``directly_add_no_mem_embed`` (every released config)
``SAM2ImagePredictor`` adds it to the stride-16 features before the decoder.

Official files are ``{"model": state_dict}``; reading them is the readers' job, this table starts
from the state_dict.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sam_jax.convert.rules import LEAF_TO_TORCH, ConversionError, check_keys
from sam_jax.convert.rules import TO_OURS as _SAM1_TO_OURS
from sam_jax.convert.rules import TO_TORCH as _SAM1_TO_TORCH
from sam_jax.models.sam2.config import Sam2Config
from sam_jax.models.sam2.model import Sam2

Path = tuple[str | int, ...]
# Our module path element -> the reference's, inside ``sam_mask_decoder.transformer.layers.N.mlp``.
_MLP_TO_TORCH: dict[str, tuple[str | int, ...]] = {"lin1": ("layers", 0), "lin2": ("layers", 1)}

# Top-level names of the image model (modules and the one tensor).
IMAGE_PARTS = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed")

# Where the converter keeps the video-only tensors of a checkpoint directory (official names/layouts).
VIDEO_FILE = "video.safetensors"

# Top-level modules/parameters of SAM2Base that only the video model (memory) uses.
KEEP_FOR_VIDEO = frozenset(
    {
        "memory_attention",
        "memory_encoder",
        "maskmem_tpos_enc",
        "no_mem_pos_enc",
        "no_obj_ptr",
        "no_obj_embed_spatial",
        "obj_ptr_proj",
        "obj_ptr_tpos_proj",
        "mask_downsample",
    }
)

# Layout of a tensor, by the kind of tensor: (to ours, to torch).
_Layout = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]
_CHANNELS_LAST: _Layout = (lambda w: w.transpose(0, 2, 3, 1), lambda w: w.transpose(0, 3, 1, 2))
_AS_IS: _Layout = (lambda w: w, lambda w: w)


class _ShapeOnlyRngs(nnx.Rngs):
    """Stands in for ``nnx.Rngs`` in abstract builds, where only shapes matter: every initializer
    gets the same key. Under ``nnx.eval_shape`` each ``nnx.Rngs`` draw updates a traced counter and
    flax 0.12 then formats a tracer error message per draw, in time linear in the trace so far:
    hiera_large's abstract build takes 10-18 s that way, 1 s this way. A subclass of ``nnx.Rngs`` so
    that it passes the modules' ``rngs: nnx.Rngs`` annotations (checked at run time under the tests)."""

    def __init__(self) -> None:
        super().__init__(0)

    def params(self) -> jax.Array:
        return jax.random.key(0)


def abstract_image_model(config: Sam2Config) -> nnx.Module:
    """:func:`build_image_model`'s module with ``jax.ShapeDtypeStruct`` leaves (``nnx.eval_shape``:
    nothing is allocated)."""
    return nnx.eval_shape(lambda: Sam2(config, rngs=_ShapeOnlyRngs()))


def build_image_model(config: Sam2Config, params: Mapping | None = None, *, seed: int = 0) -> nnx.Module:
    """The :class:`~sam_jax.models.sam2.model.Sam2` of ``config``.

    With ``params`` (:func:`to_params`' nested dict) the model is built abstractly and every leaf is
    filled from it (a leaf that is missing or extra raises); without, random weights from ``seed``.
    """
    if params is None:
        return Sam2(config, rngs=nnx.Rngs(seed))
    return fill_abstract(abstract_image_model(config), params, f"SAM 2 {config.name}")


def fill_abstract(model: nnx.Module, params: Mapping, what: str) -> nnx.Module:
    """An abstract module (``nnx.eval_shape``) with every leaf taken from ``params`` (a nested pure
    dict); raises :class:`ConversionError` listing every missing, extra and mis-shaped leaf."""
    graphdef, state = nnx.split(model)
    want = {tuple(p): v.shape for p, v in nnx.to_flat_state(state)}
    got = {tuple(p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(dict(params))[0]}
    got = {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in p): shape for p, shape in got.items()}
    if got != want:
        missing = sorted(map(str, set(want) - set(got)))
        extra = sorted(map(str, set(got) - set(want)))
        wrong = sorted(f"{p}: expected {want[p]}, got {got[p]}" for p in set(want) & set(got) if want[p] != got[p])
        raise ConversionError(f"params do not fit {what}: missing {missing}, extra {extra}, wrong {wrong}")
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
    return nnx.merge(graphdef, state)


def torch_key(path: Path) -> str:
    """sam2 state_dict key of a parameter path of :func:`build_image_model`'s module."""
    *module, leaf = path
    if module[:2] == ["sam_mask_decoder", "transformer"] and len(module) >= 2 and module[-2] == "mlp":
        module = [*module[:-1], *_MLP_TO_TORCH.get(str(module[-1]), (module[-1],))]
    return ".".join([*map(str, module), LEAF_TO_TORCH.get(str(leaf), str(leaf))])


def is_video_key(key: str) -> bool:
    """Whether a sam2 state_dict key belongs to the video model only (see :data:`KEEP_FOR_VIDEO`)."""
    return key.split(".", 1)[0] in KEEP_FOR_VIDEO


def _layout(path: Path, owner: type) -> _Layout:
    if path[-1] == "kernel" and owner in _SAM1_TO_OURS:
        return _SAM1_TO_OURS[owner], _SAM1_TO_TORCH[owner]
    if path[:2] == ("image_encoder", "trunk") and str(path[-1]).startswith("pos_embed"):
        return _CHANNELS_LAST
    return _AS_IS


def param_table(config: Sam2Config) -> dict[str, tuple[Path, tuple[int, ...], _Layout]]:
    """``{torch key: (our path, torch shape, (to ours, to torch))}`` for every tensor of the image model."""
    return dict(_param_table(config))


@functools.lru_cache(maxsize=8)
def _param_table(config: Sam2Config) -> dict[str, tuple[Path, tuple[int, ...], _Layout]]:
    model = abstract_image_model(config)
    owners = {tuple(p): type(n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Module)}
    table = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(path)
        layout = _layout(path, owners.get(path[:-1], type(None)))
        shape = layout[1](np.empty(var.shape, np.bool_)).shape
        key = torch_key(path)
        if key in table:
            raise AssertionError(f"two parameters map to {key!r}: {table[key][0]} and {path}")
        table[key] = (path, tuple(shape), layout)
    return table


def expected_shapes(config: Sam2Config, parts: tuple[str, ...] = IMAGE_PARTS) -> dict[str, tuple[int, ...]]:
    """sam2 state_dict keys and shapes of the image model ``config`` describes (of ``parts`` of it)."""
    _check_parts(parts)
    return {k: shape for k, (path, shape, _) in param_table(config).items() if path[0] in parts}


def _check_parts(parts: tuple[str, ...]) -> None:
    if not parts or set(parts) - set(IMAGE_PARTS):
        raise ValueError(f"parts must be a non-empty subset of {IMAGE_PARTS}, got {parts}")


def split_state_dict(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(image-model keys and others, video-only keys)`` of a full ``SAM2Base`` state_dict."""
    image = {k: v for k, v in state_dict.items() if not is_video_key(k)}
    video = {k: v for k, v in state_dict.items() if is_video_key(k)}
    return image, video


# The memory modules' tensors: required (at least one key each) in a whole SAM2Base state_dict, kept
# as they are; their names and shapes are checked by the video model's own table when it is ported.
MEMORY_MODULES = ("memory_attention", "memory_encoder")


def expected_video_shapes(config: Sam2Config, mem_dim: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the tensors ``SAM2Base.__init__`` owns outside the image model, as
    ``config`` fixes them (``mem_dim``: the memory encoder's output width,
    ``memory_encoder.out_proj.weight.shape[0]``; 64 in every released model)."""
    d = config.image_encoder.neck.d_model
    out: dict[str, tuple[int, ...]] = {
        "maskmem_tpos_enc": (config.num_maskmem, 1, 1, mem_dim),
        "no_mem_pos_enc": (1, 1, d),
    }
    if config.use_obj_ptrs_in_encoder:
        out |= {"mask_downsample.weight": (1, 1, 4, 4), "mask_downsample.bias": (1,)}
        mlp = config.use_mlp_for_obj_ptr_proj
        for prefix in [f"obj_ptr_proj.layers.{i}." for i in range(3)] if mlp else ["obj_ptr_proj."]:
            out |= {prefix + "weight": (d, d), prefix + "bias": (d,)}
        if config.pred_obj_scores:
            out["no_obj_ptr"] = (1, d)
    if config.no_obj_embed_spatial:
        out["no_obj_embed_spatial"] = (1, mem_dim)
    if config.proj_tpos_enc_in_obj_ptrs:
        out |= {"obj_ptr_tpos_proj.weight": (mem_dim, d), "obj_ptr_tpos_proj.bias": (mem_dim,)}
    return out


def check_video_state_dict(
    state_dict: Mapping[str, np.ndarray], config: Sam2Config, *, source: str = "checkpoint"
) -> None:
    """Raise :class:`ConversionError` naming every missing, unexpected or mis-shaped video-only
    tensor of a whole ``SAM2Base`` state_dict (:func:`expected_video_shapes`, plus at least one
    tensor of each of :data:`MEMORY_MODULES`). This is what tells SAM 2 from SAM 2.1 files: 2.1
    adds ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``."""
    _, video = split_state_dict(state_dict)
    out_proj = video.get("memory_encoder.out_proj.weight")
    mem_dim = int(out_proj.shape[0]) if out_proj is not None else config.image_encoder.neck.d_model
    expected = expected_video_shapes(config, mem_dim)
    given = {k: v for k, v in video.items() if k.split(".", 1)[0] not in MEMORY_MODULES}
    no_module = tuple(
        f"{m}.* (no tensor of the {m})" for m in MEMORY_MODULES if not any(k.startswith(m + ".") for k in video)
    )
    header = f"{source} does not match SAM 2 {config.name}'s video (memory) tensors"
    check_keys(given, expected, header, missing_extra=no_module)


def check_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: Sam2Config,
    *,
    source: str = "checkpoint",
    parts: tuple[str, ...] = IMAGE_PARTS,
) -> None:
    """Raise :class:`ConversionError` naming every missing, unexpected or mis-shaped key.

    Video-only keys (:data:`KEEP_FOR_VIDEO`) may be present; they are neither checked nor used.
    With ``parts`` a subset of :data:`IMAGE_PARTS`, keys of the other parts are ignored as well.
    """
    expected = expected_shapes(config, parts)
    given, _ = split_state_dict(state_dict)
    given = {k: v for k, v in given.items() if k.split(".", 1)[0] in parts or k.split(".", 1)[0] not in IMAGE_PARTS}
    header = (
        f"{source} does not match SAM 2 {config.name} ({len(expected)} image-model tensors expected, "
        f"{len(given)} given besides {len(state_dict) - len(given)} video-only ones)"
    )
    check_keys(given, expected, header)


def to_params(
    state_dict: Mapping[str, np.ndarray],
    config: Sam2Config,
    *,
    source: str = "checkpoint",
    parts: tuple[str, ...] = IMAGE_PARTS,
) -> dict:
    """sam2 state_dict -> nested pure dict of sam_jax parameters (float32 NumPy), rooted at the
    parts (``{"image_encoder": ..., "sam_prompt_encoder": ..., "sam_mask_decoder": ..., "no_mem_embed": ...}``).

    Strict: every key of ``parts`` must be present with its exact shape, nothing else may be given
    except video-only keys and keys of the other parts, which are ignored (:func:`split_state_dict`
    returns the video-only ones).
    """
    check_state_dict(state_dict, config, source=source, parts=parts)
    nested: dict = {}
    for key, (path, _, (to_ours, _)) in param_table(config).items():
        if path[0] not in parts:
            continue
        node = nested
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(to_ours(np.asarray(state_dict[key], dtype=np.float32)))
    return nested


def to_state_dict(params: Mapping, config: Sam2Config) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_params`: sam_jax parameters -> sam2 state_dict of the image model."""
    out = {}
    for key, (path, _, (_, to_torch)) in param_table(config).items():
        value = params
        for p in path:
            value = value[p]
        out[key] = np.ascontiguousarray(to_torch(np.asarray(value)))
    return out
