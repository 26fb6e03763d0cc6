"""The training loop: data, sharded steps, logging and resumable checkpoints in one work directory.

``WORKDIR/checkpoints/`` holds the newest checkpoints (state and data position) and
``WORKDIR/metrics.jsonl`` one line of mean metrics per logging interval. Calling :func:`train`
again with the same arguments and work directory resumes from the newest checkpoint (dropping the
metrics logged after it) and ends with exactly the parameters an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from sam_jax.core.decode import split
from sam_jax.core.image import encode
from sam_jax.data.pipeline import PipelineConfig, batches, examples, resize_example
from sam_jax.data.sources import Example
from sam_jax.models.sam.model import Sam
from sam_jax.ops.policy import ExecutionPolicy
from sam_jax.runtime import sharding
from sam_jax.train.checkpointing import TrainCheckpointer
from sam_jax.train.choices import Trainable
from sam_jax.train.step import (
    OptimizerConfig,
    StepConfig,
    init_state,
    make_optimizer,
    merge_model,
    train_step,
)

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. ``steps`` counts batches (optimiser updates are ``steps // accumulate``)."""

    steps: int = 1000
    batch_size: int = 8
    max_objects: int = 4  # prompts per image
    mask_size: int | None = None  # grid of the loss and the prompt sampling; default the input size
    trainable: Trainable = "all"
    cache_embeddings: bool = False  # embed every image once with the frozen encoder (not with "all")
    shuffle: bool = True  # shuffle and repeat the source; off for endless streams (synthetic shapes)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    step: StepConfig = dataclasses.field(default_factory=StepConfig)
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    num_threads: int = 2

    def pipeline(self, img_size: int) -> PipelineConfig:
        """The input pipeline of this run for a model of input side ``img_size``."""
        return PipelineConfig(
            img_size=img_size,
            batch_size=self.batch_size,
            max_objects=self.max_objects,
            mask_size=self.mask_size,
            seed=self.seed,
            shuffle=self.shuffle,
            num_threads=self.num_threads,
        )


def embed_examples(
    model: Sam, ds: grain.MapDataset, batch_size: int, mesh: Mesh, *, num_threads: int = 2, progress: bool = True
) -> list[dict[str, np.ndarray]]:
    """Every example of ``ds`` (in order, read by ``num_threads`` threads) with its ``image``
    replaced by its ``features`` from ``model``'s image encoder (for SAM 1 ``image_embed``
    ``(g, g, D)``). Kept in host memory: 4 MiB per image for vit_b. ``progress``: a bar on stderr
    (updated lines when stderr is not a terminal), since embedding a large set takes minutes."""
    graphdef, params = split(model)
    params = sharding.replicate(params, mesh)
    size = sharding.padded_batch_size(batch_size, mesh)  # one compiled program, the last chunk padded
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
    reader = iter(ds.to_iter_dataset(read))
    out = []
    # Closed on the way out (also on Ctrl-C), so a following message starts on its own line.
    with tqdm(total=len(ds), disable=not progress, desc="embedding", unit="img") as bar:
        while chunk := list(itertools.islice(reader, batch_size)):
            images = sharding.pad_batch(np.stack([ex["image"] for ex in chunk]), size)
            sizes = sharding.pad_batch(np.stack([ex["input_size"] for ex in chunk]), size)
            batch = sharding.shard_batch((images, sizes), mesh)
            feats = jax.device_get(encode(graphdef, params, *batch, ExecutionPolicy.for_mesh(mesh)))
            out.extend(
                {**{k: v for k, v in ex.items() if k != "image"}, "features": {n: f[i] for n, f in feats.items()}}
                for i, ex in enumerate(chunk)
            )
            bar.update(len(chunk))
    return out


def _training_batches(
    model: Sam, source: Sequence[Example], cfg: TrainConfig, mesh: Mesh, progress: bool = True
) -> grain.DatasetIterator:
    pcfg = cfg.pipeline(model.config.img_size)
    if cfg.cache_embeddings:
        # Every image embedded once, with all its masks, so that objects are still drawn per epoch.
        once = grain.MapDataset.source(source).map(lambda ex: resize_example(ex, pcfg.img_size, pcfg.mask_grid))
        source = embed_examples(model, once, cfg.batch_size, mesh, num_threads=cfg.num_threads, progress=progress)
    return iter(batches(examples(source, pcfg), pcfg))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records logged after ``step`` (by a run stopped before its next checkpoint, or cut
    off mid-line), so that a resumed run's log reads as an uninterrupted one's."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)

    def keep(line: str) -> bool:
        try:
            return line.endswith("\n") and json.loads(line)["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            return False

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def train(
    model: Sam,
    source: Sequence[Example],
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    *,
    mesh: Mesh | None = None,
    until: int | None = None,
    progress: bool = True,
) -> tuple[Sam, list[dict[str, float]]]:
    """Train ``model`` on ``source`` for ``cfg.steps`` batches, resuming from ``workdir`` if it
    holds checkpoints; with ``until``, stop (and checkpoint) after that many batches instead, to
    continue later. Returns the trained model and the metrics logged by this call.

    ``model`` gives the initial weights (ignored when resuming) and the architecture."""
    mesh = sharding.data_mesh() if mesh is None else mesh
    if cfg.batch_size % mesh.devices.size:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {mesh.devices.size} devices")
    if cfg.cache_embeddings and cfg.trainable == "all":
        raise ValueError("cache_embeddings needs a frozen image encoder: trainable 'decoder' or 'decoder+prompt'")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tx = make_optimizer(cfg.optimizer, cfg.steps)
    step_cfg = dataclasses.replace(cfg.step, policy=ExecutionPolicy.for_mesh(mesh))
    graphdef, state = init_state(model, cfg.trainable, tx, cfg.seed)
    # A copy: the step donates its state, and ``model`` must stay usable.
    state = sharding.replicate(jax.tree_util.tree_map(jnp.copy, state), mesh)
    checkpointer = TrainCheckpointer(workdir / CHECKPOINT_DIR, keep=cfg.keep_checkpoints)
    resume = checkpointer.latest_step()
    if resume is not None:
        state = checkpointer.restore_state(state, resume)
    data = _training_batches(merge_model(graphdef, state), source, cfg, mesh, progress)
    if resume is not None:
        checkpointer.restore_data(data, resume)
    _truncate_metrics(workdir / METRICS_FILE, 0 if resume is None else resume)
    end = cfg.steps if until is None else min(until, cfg.steps)
    step = int(state.step)
    history: list[dict[str, float]] = []
    # Shown on terminals and, as updated lines, in logs (as amg and convert do); closed (its line
    # ended) on the way out, Ctrl-C included, so a following message starts on its own line.
    bar = tqdm(total=end, initial=step, disable=not progress, desc="train", unit="batch")
    sums, count, start = None, 0, time.perf_counter()
    with bar, open(workdir / METRICS_FILE, "a") as log:
        while step < end:
            batch = next(data, None)
            if batch is None:
                raise ValueError(f"the data ran out after {step} batches; shuffle=True repeats a finite source")
            state, metrics = train_step(graphdef, tx, step_cfg, state, sharding.shard_batch(batch, mesh))
            step += 1
            sums = metrics if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, metrics)
            count += 1
            if step % cfg.log_every == 0 or step == end:
                record = {"step": step, **{k: float(v) / count for k, v in sums.items()}}
                record["seconds"] = round(time.perf_counter() - start, 2)
                history.append(record)
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", miou=f"{record['miou']:.3f}")
                sums, count, start = None, 0, time.perf_counter()
            if step % cfg.checkpoint_every == 0 or step == end:
                checkpointer.save(state, data)
            bar.update(1)
    checkpointer.close()
    return merge_model(graphdef, state), history
