"""sam_jax checkpoints on disk: ``config.json`` plus an orbax checkpoint of the parameters.

Layout of a model directory::

    DIR/config.json     the config's to_dict(), its family tag and a format version
    DIR/params/         orbax StandardCheckpointer tree of float arrays, paths as in the model

No torch anywhere: this is what ``sam_jax.load_sam`` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sam_jax.models import registry

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def _stringify_keys(tree: Any) -> Any:
    # orbax stores dict keys as strings; nnx.List indices are ints.
    if isinstance(tree, dict):
        return {str(k): _stringify_keys(v) for k, v in tree.items()}
    return tree


def save_params(directory: str | os.PathLike, config: Any, params: dict, *, force: bool = False) -> Path:
    """Write ``params`` (a nested pure dict, as ``nnx.to_pure_dict`` gives) and ``config``.

    ``force`` replaces an existing checkpoint; otherwise an existing one is an error.
    """
    directory = Path(directory).absolute()
    if (directory / PARAMS_DIR).exists() and not force:
        raise FileExistsError(f"{directory / PARAMS_DIR} already exists; pass force=True to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    tree = _stringify_keys(jax.tree_util.tree_map(np.asarray, params))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory / PARAMS_DIR, tree, force=force)
    meta = {"format_version": FORMAT_VERSION, "family": registry.family_of(config).tag, "config": config.to_dict()}
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(directory / CONFIG_FILE)
    return directory


def load_config(directory: str | os.PathLike) -> Any:
    """Read ``DIR/config.json`` into its family's config (no ``family`` tag: SAM 1, as written
    before tags existed); a clear error if ``directory`` is not a sam_jax checkpoint."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a sam_jax checkpoint directory (no {CONFIG_FILE}); "
            "convert a PyTorch checkpoint first with `sam-jax convert CHECKPOINT OUTPUT_DIR`"
        )
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return registry.config_from_dict(meta["config"], meta.get("family"))


def load_params(directory: str | os.PathLike, abstract_params: dict) -> dict:
    """Restore parameters into the structure of ``abstract_params`` (shape/dtype leaves).

    Strict: a checkpoint lacking a parameter, holding an extra one, or with another shape raises
    ``ValueError`` naming the paths.
    """
    directory = Path(directory).absolute()
    target = _stringify_keys(abstract_params)
    with ocp.StandardCheckpointer() as ckpt:
        meta = ckpt.metadata(directory / PARAMS_DIR)
        stored = _flatten(_stringify_keys(_tree_of(meta)))
        wanted = _flatten(target)
        missing = sorted(set(wanted) - set(stored))
        extra = sorted(set(stored) - set(wanted))
        wrong = sorted(f"{k}: {stored[k]} != {wanted[k]}" for k in set(wanted) & set(stored) if stored[k] != wanted[k])
        if missing or extra or wrong:
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing[:10]}, "
                f"unexpected {extra[:10]}, wrong shape {wrong[:10]}"
            )
        restored = ckpt.restore(directory / PARAMS_DIR, target)
    return _restore_keys(restored, abstract_params)


def _tree_of(meta: Any) -> Any:
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return tree


def _flatten(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): tuple(tree.shape)}


def _restore_keys(tree: Any, like: Any) -> Any:
    if isinstance(like, dict):
        return {k: _restore_keys(tree[str(k)], v) for k, v in like.items()}
    return tree
