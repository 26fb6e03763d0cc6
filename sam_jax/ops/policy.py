"""The execution policy: how heavy operations run on the platform at hand, decided once.

Model code takes a policy and hands it to :mod:`sam_jax.ops`; it never asks which backend it runs
on. Drivers (predictors, the mask generator, training) derive the policy from the platform of the
mesh they run on (:meth:`ExecutionPolicy.for_mesh`). Every policy computes the same function; they
differ in evaluation order, memory traffic and kernels only (:attr:`ExecutionPolicy.attention_kernel`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

from jax.sharding import Mesh

AttentionKernel = Literal["xla", "pallas", "cudnn"]
ATTENTION_KERNELS: tuple[str, ...] = ("xla", "pallas", "cudnn")
# Overrides the platform's choice of attention kernel (see ExecutionPolicy.for_platform).
KERNEL_ENV = "SAM_JAX_ATTENTION_KERNEL"


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
      attention_kernel: what computes :func:`sam_jax.ops.attention.attention`. ``"xla"``: plain
        XLA ops (blocked as above when ``blocked``). ``"pallas"``: the fused Pallas kernel
        (:mod:`sam_jax.ops.flash_attention`; the bias added per tile, no ``(Q, K)`` arrays).
        ``"cudnn"``: cuDNN's fused attention (``jax.nn.dot_product_attention``) where it applies
        (no bias, bf16/fp16, head dim a multiple of 8 up to 128), the Pallas kernel elsewhere.
      interpret: run Pallas kernels through the Pallas interpreter: the only way they run on a
        CPU (tests); slow, never chosen by :meth:`for_platform`.
    """

    blocked: bool = False
    score_block: int = 1 << 19
    token_block: int = 512
    prompts_per_device: int | None = None
    devices: int = 1
    attention_kernel: AttentionKernel = "xla"
    interpret: bool = False

    def __post_init__(self) -> None:
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention_kernel must be one of {ATTENTION_KERNELS}, got {self.attention_kernel!r}")

    @classmethod
    def for_platform(cls, platform: str, devices: int = 1) -> ExecutionPolicy:
        """The policy for a platform name as JAX spells it (``"cpu"``, ``"gpu"``, ``"tpu"``, ...).

        CPUs: XLA in cache-sized blocks. NVIDIA GPUs (``"gpu"``/``"cuda"``): cuDNN attention where
        it applies, the Pallas (Triton) kernel elsewhere. Others (``"tpu"``, ``"rocm"``): plain
        XLA; the Pallas kernel is written for NVIDIA's Triton and not verified on Mosaic (TPU) or
        AMD. The environment variable ``SAM_JAX_ATTENTION_KERNEL`` (``xla``, ``pallas`` or
        ``cudnn``) overrides the choice on every platform: the Pallas kernel has been compiled for
        sm_90 offline but not yet run on a GPU here, so ``xla`` is the way back if it misbehaves
        (on a CPU, ``pallas`` needs ``interpret``, which only tests set)."""
        override = os.environ.get(KERNEL_ENV)
        if override is not None and override not in ATTENTION_KERNELS:
            raise ValueError(f"{KERNEL_ENV} must be one of {ATTENTION_KERNELS}, got {override!r}")
        if platform == "cpu":
            return cls(blocked=True, prompts_per_device=4, devices=devices, attention_kernel=override or "xla")
        if platform in ("gpu", "cuda"):
            return cls(devices=devices, attention_kernel=override or "cudnn")
        return cls(devices=devices, attention_kernel=override or "xla")

    @classmethod
    def for_mesh(cls, mesh: Mesh) -> ExecutionPolicy:
        """The policy for work split over ``mesh`` (its devices share one platform; AMD GPUs, which
        JAX also calls ``"gpu"``, are told apart as ``"rocm"``: no cuDNN there)."""
        device = mesh.devices.flat[0]
        platform = device.platform
        if platform == "gpu" and "rocm" in str(getattr(device.client, "platform_version", "")).lower():
            platform = "rocm"
        return cls.for_platform(platform, mesh.devices.size)

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
