"""Training checkpoints with ``orbax.checkpoint.CheckpointManager``.

A checkpoint at step ``N`` is ``DIR/N/`` holding two items: ``state`` (the whole
:class:`~sam_jax.train.step.TrainState`: step, trainable and frozen parameters, optimiser state,
base RNG key) and ``data`` (the grain iterator's position). Restoring both makes a resumed run
compute exactly what an uninterrupted one does. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from sam_jax.train.step import TrainState


class TrainCheckpointer:
    """Save and restore ``(TrainState, data iterator)`` pairs under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        """Step of the newest checkpoint, or None if there is none."""
        return self.manager.latest_step()

    def save(self, state: TrainState, data_iterator: grain.DatasetIterator) -> None:
        """Write a checkpoint at ``state.step`` (replacing none: each step is saved once)."""
        step = int(state.step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore_state(self, like: TrainState, step: int) -> TrainState:
        """The state saved at ``step``, shaped and placed like ``like``."""
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like
        )
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return restored.state

    def restore_data(self, data_iterator: grain.DatasetIterator, step: int) -> None:
        """Move ``data_iterator`` to the position saved at ``step`` (in place).

        Separate from :meth:`restore_state` so that the data can be built from the restored state
        (embeddings cached with the restored image encoder)."""
        self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))

    def close(self) -> None:
        self.manager.close()
