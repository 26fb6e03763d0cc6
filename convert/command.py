"""``sam-jax convert``: a PyTorch or transformers SAM checkpoint, an official SAM 2 / 2.1 ``.pt`` or a
transformers SAM 2 checkpoint -> a sam_jax checkpoint directory."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from sam_jax import checkpoint
from sam_jax.convert import rules, sam2_rules
from sam_jax.convert.detect import check_model_type, detect_model_type
from sam_jax.convert.readers import read_checkpoint
from sam_jax.models.registry import family_of, get_config


def convert_checkpoint(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_type: str | None = None,
    force: bool = False,
) -> Path:
    """Convert ``path`` (official ``.pth``, MedSAM, transformers ``SamModel``, official SAM 2 / 2.1
    ``.pt``, transformers ``Sam2Model`` / ``Sam2VideoModel``) into ``output_dir``.

    ``model_type`` (``vit_b``/``vit_l``/``vit_h``, ``sam2_hiera_*``/``sam2.1_hiera_*``, or a test
    config such as ``tiny``) is detected from the image encoder's shapes when None, and checked
    against them when given. Conversion is strict: every tensor of the model must be present with its
    exact shape and nothing else may be left over. For SAM 2 the video model's tensors (memory
    attention, memory encoder, object pointers, ...) are checked as far as the config fixes them
    (:func:`sam2_rules.check_video_state_dict`) and kept as they are, official names and layouts, in
    ``output_dir/video.safetensors`` for the video predictor; ``sam_jax.load_sam`` reads the rest.
    A SAM 2 file with no video tensor at all (transformers' ``Sam2Model`` saves none) converts to an
    image-only directory, without ``video.safetensors``; one with some must have them all.
    Shows progress on stderr and prints a summary; returns the absolute output directory, which
    ``sam_jax.load_sam`` reads. ``force`` replaces an existing sam_jax checkpoint there.

    Raises ``ValueError`` (unreadable file, not SAM, wrong model type, missing/extra/mis-shaped
    tensors), ``FileNotFoundError`` and ``FileExistsError``, each naming the path involved.
    """
    path, output_dir = Path(path), Path(output_dir)
    if (output_dir / checkpoint.PARAMS_DIR).exists() and not force:  # fail before reading gigabytes
        raise FileExistsError(f"{output_dir} already holds a sam_jax checkpoint; pass --force to overwrite it")

    state_dict, source = read_checkpoint(path, progress=True)
    if model_type is None:
        model_type = detect_model_type(state_dict)
    else:
        check_model_type(state_dict, model_type)
    config = get_config(model_type)
    sam2 = family_of(config).tag == "sam2"

    count = len(state_dict)
    video: dict = {}
    with tqdm(total=count, desc=f"mapping to {model_type}", unit="tensor") as bar:
        if sam2:
            video = sam2_rules.split_state_dict(state_dict)[1]
            if video:  # none at all (transformers' Sam2Model): an image-only directory
                sam2_rules.check_video_state_dict(state_dict, config, source=f"{path} ({source})")
            params = sam2_rules.to_params(state_dict, config, source=f"{path} ({source})")
        else:
            params = rules.to_params(state_dict, config, source=f"{path} ({source})")
        bar.update(count)
    del state_dict  # frees the originals of transposed tensors (2.5 GB for vit_h)
    with tqdm(total=count, desc=f"writing {output_dir.name}", unit="tensor") as bar:
        output_dir = checkpoint.save_params(output_dir, config, params, force=force)
        _write_video_tensors(output_dir, video)
        bar.update(count)

    kept = f" ({len(video)} video-only, kept in {sam2_rules.VIDEO_FILE})" if video else ""
    if sam2 and not video:
        kept = (
            " (image model only: the file has no video tensors, so the directory serves SAM2ImagePredictor; "
            "video needs Meta's .pt or a transformers Sam2VideoModel file)"
        )
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    print(
        f"converted {path}\n"
        f"  source:     {source}\n"
        f"  model type: {model_type}\n"
        f"  tensors:    {count}{kept}\n"
        f"  parameters: {n_params:,}\n"
        f"  written to: {output_dir}"
    )
    return output_dir


def _write_video_tensors(output_dir: Path, video: dict) -> None:
    """``video`` (official names and layouts, float32) to ``output_dir/video.safetensors``; a stale
    file from an earlier conversion is removed when there is nothing to write."""
    target = output_dir / sam2_rules.VIDEO_FILE
    if not video:
        target.unlink(missing_ok=True)
        return
    from safetensors.numpy import save_file

    tmp = target.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in video.items()}, str(tmp))
    tmp.replace(target)
