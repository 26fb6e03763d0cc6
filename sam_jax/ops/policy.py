"""The execution policy: how heavy operations run on the platform at hand, decided once.

Model code takes a policy and hands it to :mod:`sam_jax.ops`; it never asks which backend it runs
on. Drivers (predictors, the mask generator, training) derive the policy from the platform of the
mesh they run on (:meth:`ExecutionPolicy.for_mesh`). Every policy computes the same function; they
differ in evaluation order and memory traffic only. This is where accelerator kernels plug in.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
    """How to run: hashable, so it is a static argument of jitted functions.

    Attributes:
      blocked: run attention and token-wise layers in cache-sized sequential steps (CPUs, whose
        caches are small next to a vit_b global attention's (12, 4096, 4096) scores); otherwise
        each op runs whole and the compiler schedules it (GPUs, TPUs).
      score_block: with ``blocked``, scores computed per step: one head and
        ``score_block // keys`` query rows (2 MiB of fp32 at the default).
      token_block: with ``blocked``, tokens per step of the token-wise layers (qkv, proj, MLP):
        a 512-token slice of a vit_b MLP's hidden activation is 6 MiB.
      prompts_per_device: decode at most this many prompts per device at a time (a ``lax.map``
        over steps; a layer's working set stays in cache), or all at once when None.
      devices: devices the prompt axis is split over (steps take the same share of each).
    """

    blocked: bool = False
    score_block: int = 1 << 19
    token_block: int = 512
    prompts_per_device: int | None = None
    devices: int = 1

    @classmethod
    def for_platform(cls, platform: str, devices: int = 1) -> ExecutionPolicy:
        """The policy for a platform name as JAX spells it (``"cpu"``, ``"gpu"``, ``"tpu"``, ...)."""
        if platform == "cpu":
            return cls(blocked=True, prompts_per_device=4, devices=devices)
        return cls(devices=devices)

    @classmethod
    def for_mesh(cls, mesh: Mesh) -> ExecutionPolicy:
        """The policy for work split over ``mesh`` (its devices share one platform)."""
        return cls.for_platform(mesh.devices.flat[0].platform, mesh.devices.size)

    def prompt_chunk(self, num_prompts: int) -> int | None:
        """Prompts per decoding step for ``num_prompts`` split over :attr:`devices`: up to
        :attr:`prompts_per_device` per device, dividing each device's share; None (one batched
        step) when that is off or one step would hold them all."""
        if self.prompts_per_device is None or num_prompts % self.devices:
            return None
        local = num_prompts // self.devices
        per_device = max(k for k in range(1, self.prompts_per_device + 1) if local % k == 0)
        return None if per_device == local else per_device * self.devices


# Whole ops, scheduled by the compiler: what the model files compute when given no policy.
XLA = ExecutionPolicy()
