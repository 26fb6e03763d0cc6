"""Read SAM checkpoints as ``{official SAM name: NumPy array}``, whatever format they come in.

Formats, recognised from the file's content rather than its name:

- official SAM ``.pth``: a state_dict written by ``torch.save`` (zip archive, or the legacy format);
- official SAM 2 / 2.1 ``.pt``: ``{"model": state_dict}`` (names are ``SAM2Base``'s, kept as they are);
- MedSAM and other training checkpoints: the same state_dict, possibly wrapped as ``{"model": sd, ...}``
  or ``{"state_dict": sd, ...}`` and possibly with every name prefixed by ``module.``
  (DistributedDataParallel) or ``sam.`` (a wrapper holding SAM as ``self.sam``);
- transformers ``SamModel``: a directory, ``model.safetensors`` (read without torch) or
  ``pytorch_model.bin``; names are mapped by :mod:`convert.transformers_names`;
- transformers ``Sam2Model`` / ``Sam2VideoModel`` (``facebook/sam2.1-hiera-*``), the same files;
  names are mapped to SAM 2's by :mod:`convert.sam2_transformers`.

PyTorch files are loaded with ``torch.load(weights_only=True)``: tensors and plain containers are
unpickled, code never is, so a checkpoint that pickled other objects (a whole model, an argparse
Namespace) is refused. Floating tensors come back as float32; ``pixel_mean``/``pixel_std`` buffers,
which some SAM forks save, are checked against SAM's fixed normalisation and dropped. torch is
imported only when a PyTorch file is read.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from tqdm import tqdm

from sam_jax.convert import sam2_transformers
from sam_jax.convert.detect import SAM2_PREFIXES
from sam_jax.convert.transformers_names import from_transformers, is_transformers_layout
from sam_jax.models.sam.config import PIXEL_MEAN, PIXEL_STD

# Files looked for, in this order, when a directory is given (transformers' save_pretrained layout).
DIRECTORY_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys under which training checkpoints keep the model's state_dict.
WRAPPER_KEYS = ("model", "state_dict")
# Name prefixes added by training wrappers, stripped when every name carries one.
PREFIXES = ("module.", "sam.")
_NORMALISATION = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}
# Read as float32. Importing ml_dtypes (a JAX dependency) is also what lets safetensors.numpy read BF16.
_CONVERTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float64), np.dtype(ml_dtypes.bfloat16))


def read_checkpoint(path: str | os.PathLike, *, progress: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """Read a SAM checkpoint (see the module docstring for the formats).

    Returns ``(state_dict, source_format)``: ``state_dict`` maps official SAM names to arrays in the
    official PyTorch layout (float32 for every floating tensor; e.g. ``image_encoder.pos_embed`` is
    (1, 64, 64, C)), and ``source_format`` says what the file was and what was done to it (unwrapping,
    prefixes stripped, names mapped, tensors dropped, dtypes converted). Nothing is checked against a
    model here: :func:`convert.rules.check_state_dict` does that.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the file and what was
    expected for anything unreadable (truncated, corrupt, not a checkpoint, unsafe to unpickle).
    """
    path = Path(path)
    file = _resolve(path)
    kind = _sniff(file)
    notes = [f"read {file.name} from the directory"] if file != path else []
    if kind == "safetensors":
        tensors = _read_safetensors(file, notes, progress)
    else:
        tensors = _read_torch(file, kind, notes, progress)

    while prefix := next((p for p in PREFIXES if tensors and all(k.startswith(p) for k in tensors)), None):
        tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
        notes.append(f"stripped the prefix {prefix!r} from every name")
    if sam2_transformers.is_transformers_sam2_layout(tensors):  # before SamModel's test: both use vision_encoder.*
        tensors, renamed = sam2_transformers.from_transformers(tensors)
        notes += renamed
        video = any(k.startswith("memory_attention.") for k in tensors)
        layout = f"transformers {'Sam2VideoModel' if video else 'Sam2Model'} names"
    elif is_transformers_layout(tensors):
        tensors, renamed = from_transformers(tensors)
        notes += renamed
        layout = "transformers SamModel names"
    elif any(k.startswith(SAM2_PREFIXES) for k in tensors):
        layout = "official SAM 2 names"
    else:
        layout = "official SAM names"
    _drop_normalisation(tensors, notes)
    container = "safetensors file" if kind == "safetensors" else "PyTorch file"
    return tensors, f"{container}, {layout}" + "".join(f"; {n}" for n in notes)


def _resolve(path: Path) -> Path:
    """The file to read: ``path`` itself, or the checkpoint inside a transformers directory."""
    if path.is_dir():
        for name in DIRECTORY_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ValueError(f"{path} is a directory without {' or '.join(DIRECTORY_FILES)}; it holds {found}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    return path


def _sniff(file: Path) -> str:
    """``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save) or ``"safetensors"``, from the first bytes."""
    with file.open("rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    # safetensors: little-endian u64 header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol opcode
        return "pickle"
    raise ValueError(
        f"{file} is not a checkpoint: expected a PyTorch file (torch.save) or a safetensors file, "
        f"but it {'is empty' if not head else f'starts with {head!r}'}"
    )


def _as_float32(arrays: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """Floating arrays of other precisions -> float32 (exact for bf16/fp16); the rest unchanged."""
    converted = [k for k, a in arrays.items() if a.dtype in _CONVERTED_DTYPES]
    if converted:
        dtypes = sorted({str(arrays[k].dtype) for k in converted})
        notes.append(f"converted {len(converted)} {'/'.join(dtypes)} tensors to float32")
    return {k: a.astype(np.float32) if k in converted else a for k, a in arrays.items()}


def _read_safetensors(file: Path, notes: list[str], progress: bool) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            keys = list(f.keys())
            bar = tqdm(keys, desc=f"reading {file.name}", unit="tensor", disable=not progress)
            arrays = {key: f.get_tensor(key) for key in bar}
    except SafetensorError as error:
        raise ValueError(f"{file} is truncated or corrupt: expected a safetensors file ({error})") from error
    return _as_float32(arrays, notes)


def _read_torch(file: Path, kind: str, notes: list[str], progress: bool) -> dict[str, np.ndarray]:
    try:
        import torch
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"reading {file} needs torch (pip install 'sam-jax[convert]'); "
            "transformers model.safetensors files can be read without it",
            name="torch",
        ) from error

    if kind == "zip":
        try:
            zipfile.ZipFile(file).close()
        except zipfile.BadZipFile as error:
            raise ValueError(
                f"{file} is truncated or corrupt: expected a PyTorch zip archive (torch.save), "
                f"but the archive's directory at the end of the file is missing ({error})"
            ) from error
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{file} holds pickled Python objects besides tensors, which are not loaded because unpickling "
            "them runs code; expected a state_dict, alone or under 'model'/'state_dict' in a dict "
            "(re-save it with torch.save(model.state_dict(), path))"
        ) from error
    except Exception as error:  # torch.load raises OSError, RuntimeError, EOFError or KeyError on damage
        raise ValueError(
            f"{file} is truncated or corrupt: expected a PyTorch checkpoint written by torch.save "
            f"({type(error).__name__}: {error})"
        ) from error

    state_dict = _unwrap(loaded, file, notes, torch.Tensor)
    arrays = {}
    for key, tensor in tqdm(state_dict.items(), desc=f"reading {file.name}", unit="tensor", disable=not progress):
        tensor = tensor.detach()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16 of its own: reinterpret the bits
            arrays[key] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            arrays[key] = tensor.numpy()
    return _as_float32(arrays, notes)


def _unwrap(obj: Any, file: Path, notes: list[str], tensor_type: type) -> dict[str, Any]:
    """The state_dict inside a loaded object: itself, or ``obj["model"]`` / ``obj["state_dict"]``."""
    while isinstance(obj, Mapping) and not all(isinstance(v, tensor_type) for v in obj.values()):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            others = [str(k) for k, v in obj.items() if not isinstance(v, tensor_type)]
            raise ValueError(
                f"{file}: expected a state_dict (names -> tensors) or a training checkpoint holding one "
                f"under {' or '.join(map(repr, WRAPPER_KEYS))}; found non-tensor entries {others[:8]}"
            )
        ignored = sorted(str(k) for k in obj if k != wrapper)
        notes.append(f"took checkpoint[{wrapper!r}]" + (f", ignoring {', '.join(ignored)}" if ignored else ""))
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        found = "an empty dict" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{file}: expected a state_dict (names -> tensors), found {found}")
    return dict(obj)


def _drop_normalisation(state_dict: dict[str, np.ndarray], notes: list[str]) -> None:
    """Remove ``pixel_mean``/``pixel_std`` if present, after checking they are SAM's fixed values."""
    dropped = []
    for key, expected in _NORMALISATION.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict.pop(key), np.float32).reshape(-1)
        # rtol covers values stored in bf16/fp16; any other normalisation is off by far more.
        if value.shape != (3,) or not np.allclose(value, expected, rtol=1e-2):
            raise ValueError(
                f"checkpoint {key} is {value.tolist()}, but SAM normalises images with {key} "
                f"{list(expected)}; sam_jax cannot convert a model trained with another normalisation"
            )
        dropped.append(key)
    if dropped:
        notes.append(f"dropped {' and '.join(dropped)} (SAM's fixed normalisation, not parameters)")
