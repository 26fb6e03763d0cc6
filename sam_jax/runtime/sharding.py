"""Device placement in one place: a 1-D data mesh over every device, batch sharding, replication.

Batches are split along their leading axis over the ``"data"`` mesh axis; parameters are
replicated. Computation runs under plain ``jax.jit`` (GSPMD propagates the shardings); there is
no pmap. Across hosts, call ``jax.distributed.initialize()`` first: ``jax.devices()`` then spans
every process.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sam_jax.core.prompts import pow2_at_least

DATA_AXIS = "data"


@functools.cache
def data_mesh(devices: tuple[jax.Device, ...] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all local devices)."""
    devices = tuple(jax.local_devices()) if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def padded_batch_size(n: int, mesh: Mesh) -> int:
    """Smallest size >= ``n`` that is a power of two (to reuse compiled programs) and a multiple
    of the number of devices (so the batch splits evenly)."""
    d = mesh.devices.size
    return -(-pow2_at_least(n) // d) * d


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis of ``x`` to ``size`` by repeating zeros."""
    if x.shape[0] == size:
        return x
    return np.concatenate([x, np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)])


def shard_batch(tree, mesh: Mesh):
    """Place every array of ``tree`` split along its leading axis (which must divide evenly)."""
    return jax.device_put(tree, batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
    """Place every array of ``tree`` whole on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))
