"""What every predictor holds: the model split once, its parameters on the mesh, the jitted decoder
with the graph bound, the positional encoding, the execution policy, and mask resizes cached per
image size. Family predictors (:class:`~sam_jax.predictors.sam.SamPredictor`,
:class:`~sam_jax.predictors.sam2.SAM2ImagePredictor`) add their images' state and prompt rules."""

from __future__ import annotations

import collections
from collections.abc import Callable

from flax import nnx
from jax.sharding import Mesh

from sam_jax.core.decode import decoder, split
from sam_jax.core.image import dense_pe
from sam_jax.core.resize import Resize
from sam_jax.ops.policy import ExecutionPolicy
from sam_jax.runtime import sharding
from sam_jax.runtime.compile_cache import enable_compilation_cache

# Mask resizes kept per predictor, one per distinct image size (a few KB each).
RESIZE_CACHE_SIZE = 32


class PredictorBase:
    """The model-side state shared by predictors (see the module docstring).

    Attributes: ``model``, ``mesh``, ``graphdef`` and ``params`` (replicated on the mesh).
    """

    def __init__(self, model: nnx.Module, mesh: Mesh | None) -> None:
        enable_compilation_cache()
        self.model = model
        self.mesh = sharding.data_mesh() if mesh is None else mesh
        self.graphdef, params = split(model)
        self.params = sharding.replicate(params, self.mesh)
        self._decoder = decoder(self.graphdef)
        self._image_pe = dense_pe(self.graphdef, self.params)
        self._policy = ExecutionPolicy.for_mesh(self.mesh)
        self._resizes: collections.OrderedDict[tuple[int, int], Resize] = collections.OrderedDict()

    def _cached_resize(self, original_size: tuple[int, int], make: Callable[[tuple[int, int]], Resize]) -> Resize:
        """``make(original_size)`` on the mesh, from a bounded most-recently-used cache (a job over
        thousands of photo sizes keeps at most :data:`RESIZE_CACHE_SIZE`)."""
        if original_size in self._resizes:
            self._resizes.move_to_end(original_size)
        else:
            self._resizes[original_size] = sharding.replicate(make(original_size), self.mesh)
            while len(self._resizes) > RESIZE_CACHE_SIZE:
                self._resizes.popitem(last=False)
        return self._resizes[original_size]
