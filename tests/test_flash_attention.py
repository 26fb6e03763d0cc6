"""The fused Pallas attention (:mod:`sam_jax.ops.flash_attention`) against the plain XLA attention.

Everything runs in Pallas interpret mode on CPU (``interpret=True``; the policy's ``interpret``
field), at fp32 with highest matmul precision (conftest). The GPU path cannot run here: its
evidence is that the kernel lowers for CUDA (to XLA's Triton custom call) on this CPU-only host,
and that the Triton IR it emits compiles to an sm_90 cubin without register spills.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sam_jax.models.sam2 import config as sam2_config
from sam_jax.models.sam2.hiera import Hiera
from sam_jax.ops.attention import _attend, attention, cudnn_applies
from sam_jax.ops.flash_attention import default_blocks, flash_attention
from sam_jax.ops.policy import ExecutionPolicy

from conftest import max_abs

TOL = 1e-5  # fp32: the kernel and _attend differ only in fp32 summation order
PALLAS = ExecutionPolicy(attention_kernel="pallas", interpret=True)


def operands(z, queries, h, w, d, *, bias=True, dtype=jnp.float32, seed=0):
    """q (pre-scaled), k, v and SAM-like rel_h / rel_w (or None) for an ``h x w`` key grid."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
    q = jnp.asarray(rng.standard_normal((z, queries, d), np.float32) * d**-0.5, dtype)
    k, v = normal(z, h * w, d), normal(z, h * w, d)
    if not bias:
        return q, k, v, None, None
    return q, k, v, normal(z, queries, h), normal(z, queries, w)


reference = jax.jit(_attend)  # one compiled program per shape instead of eager ops


@pytest.mark.parametrize(
    "z, h, w, d, blocks",
    [
        (2, 14, 14, 64, None),  # SAM's 14x14 windows: 196 keys on a 14x16 grid (224 keys, 7 tiles of 2 rows)
        (2, 10, 10, 96, (16, 16)),  # tiny's 10x10 grid; one 16-wide row per tile; head dim 96 -> 128
        (2, 7, 9, 112, (64, 64)),  # odd sizes: 63 queries, rows 9 -> 16, 4 rows per tile (8 rows: 1 padded)
        (1, 3, 40, 80, (16, 16)),  # a row wider than a tile: 40 -> 64 = 4 tiles, the last all padding
    ],
    ids=["window14", "grid10", "odd7x9", "wide_rows"],
)
def test_window_and_odd_shapes(z, h, w, d, blocks):
    q, k, v, rel_h, rel_w = operands(z, h * w, h, w, d)
    bq, bk = blocks or (None, None)
    out = flash_attention(q, k, v, rel_h, rel_w, block_q=bq, block_k=bk, interpret=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert max_abs(out, reference(q, k, v, rel_h, rel_w)) <= TOL


def test_global_64x64():
    """A vit global attention (64x64 grid, 4096 keys, head dim 64) at two heads, default tiles."""
    q, k, v, rel_h, rel_w = operands(2, 4096, 64, 64, 64, seed=1)
    assert default_blocks(4096, 4096, 64) == (128, 64)  # one image row per key tile
    out = flash_attention(q, k, v, rel_h, rel_w, interpret=True)
    assert max_abs(out, reference(q, k, v, rel_h, rel_w)) <= TOL


@pytest.mark.parametrize(
    "z, queries, keys, d",
    [(2, 49, 196, 64), (2, 17, 100, 24), (1, 16, 1024, 112)],
    ids=["pooled_window", "odd", "pooled_global"],
)
def test_no_bias_queries_other_than_keys(z, queries, keys, d):
    """Hiera: no bias, queries max-pooled (fewer than keys); padded keys masked by index."""
    q, k, v, _, _ = operands(z, queries, 1, keys, d, bias=False)
    out = flash_attention(q, k, v, interpret=True)
    assert out.shape == q.shape
    assert max_abs(out, reference(q, k, v, None, None)) <= TOL


def test_large_logits_stay_finite():
    """The online softmax subtracts running maxima: logits of +-1e4 (fp32 exp overflows past 88)
    give the reference's result, and padded keys (bias -1e30) never turn a row into NaN."""
    q, k, v, rel_h, rel_w = operands(2, 100, 10, 10, 96, seed=3)
    rel_h = rel_h * 1e4
    out = flash_attention(q * 100, k, v, rel_h, rel_w, block_q=16, block_k=16, interpret=True)
    ref = reference(q * 100, k, v, rel_h, rel_w)
    assert bool(jnp.isfinite(out).all())
    assert max_abs(out, ref) <= TOL


@pytest.mark.parametrize("bias", [True, False], ids=["window_bias", "no_bias"])
def test_bf16_within_rounding_bound(bias):
    """bf16 q/k/v: scores, softmax and accumulators stay fp32; the only roundings are the
    probabilities to bf16 before ``p @ v`` (relative 2^-9 each, at most 2^-9 max|v| in the
    weighted mean) and the bf16 output (2^-9 |out|): so |out - exact| <= 2^-8 max|v|, exact being
    fp32 attention of the same bf16-rounded operands. Measured: 4.4e-3 with bias, 2.2e-3
    without (bound 1.7e-2, max|v| = 4.34); XLA's bf16 attention of the same operands: 1.6e-2 and
    5.5e-3. Global 64x64 (test_bf16_global): 2.9e-3 (XLA bf16 1.4e-2, bound 1.8e-2)."""
    q, k, v, rel_h, rel_w = operands(2, 196, 14, 14, 64, bias=bias, dtype=jnp.bfloat16, seed=2)
    out = flash_attention(q, k, v, rel_h, rel_w, interpret=True)
    assert out.dtype == jnp.bfloat16
    f32 = lambda x: None if x is None else x.astype(jnp.float32)
    exact = reference(*map(f32, (q, k, v, rel_h, rel_w)))
    bound = 2.0**-8 * float(jnp.abs(f32(v)).max())
    err = max_abs(out, exact)
    assert err <= bound, (err, bound)
    # Not looser than XLA's own bf16 attention of the same operands (bf16 scores and weights).
    assert err <= max_abs(reference(q, k, v, rel_h, rel_w), exact)


def test_bf16_global():
    q, k, v, rel_h, rel_w = operands(1, 4096, 64, 64, 64, dtype=jnp.bfloat16, seed=4)
    out = flash_attention(q, k, v, rel_h, rel_w, interpret=True)
    f32 = lambda x: x.astype(jnp.float32)
    exact = reference(*map(f32, (q, k, v, rel_h, rel_w)))
    assert max_abs(out, exact) <= 2.0**-8 * float(jnp.abs(f32(v)).max())


def test_bad_input_is_refused():
    q, k, v, rel_h, rel_w = operands(2, 16, 4, 4, 16)
    with pytest.raises(ValueError, match="key grid"):
        flash_attention(q, k, v, rel_h[..., :3], rel_w, interpret=True)
    with pytest.raises(ValueError, match="together"):
        flash_attention(q, k, v, rel_h, None, interpret=True)
    # Under the tests the shape annotations (jaxtyping: a TypeError) see this first.
    with pytest.raises((ValueError, TypeError)):
        flash_attention(q, k, v[:, :8], interpret=True)
    with pytest.raises(TypeError, match="dtype"):
        flash_attention(q, k.astype(jnp.bfloat16), v, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        flash_attention(q, k, v, block_q=24, interpret=True)
    with pytest.raises((ValueError, TypeError), match="attention_kernel"):
        ExecutionPolicy(attention_kernel="triton")


def test_inference_only():
    """No VJP (the docstring says so); operands that carry no gradient are fine (frozen encoder)."""
    q, k, v, _, _ = operands(1, 16, 1, 16, 16, bias=False)
    with pytest.raises(ValueError, match="Linearization"):
        jax.grad(lambda q: flash_attention(q, k, v, interpret=True).sum())(q)
    grad = jax.grad(lambda x: (flash_attention(q, k, v, interpret=True) * x).sum())(2.0)
    assert abs(float(grad) - float(reference(q, k, v, None, None).sum())) <= 1e-4


def test_environment_overrides_the_platforms_kernel(monkeypatch):
    monkeypatch.setenv("SAM_JAX_ATTENTION_KERNEL", "xla")
    assert ExecutionPolicy.for_platform("gpu").attention_kernel == "xla"
    monkeypatch.setenv("SAM_JAX_ATTENTION_KERNEL", "pallas")
    assert ExecutionPolicy.for_platform("tpu").attention_kernel == "pallas"
    monkeypatch.setenv("SAM_JAX_ATTENTION_KERNEL", "triton")
    with pytest.raises(ValueError, match="SAM_JAX_ATTENTION_KERNEL must be one of"):
        ExecutionPolicy.for_platform("gpu")


def test_policy_selects_the_kernel():
    assert ExecutionPolicy.for_platform("cpu").attention_kernel == "xla"
    assert ExecutionPolicy.for_platform("gpu").attention_kernel == "cudnn"
    assert ExecutionPolicy.for_platform("tpu").attention_kernel == "xla"
    assert not ExecutionPolicy.for_platform("gpu").interpret
    # cuDNN's flash attention: bf16/fp16 only, head dims multiple of 8 up to 128.
    bf16 = lambda *s: jnp.zeros(s, jnp.bfloat16)
    assert cudnn_applies(bf16(2, 49, 96), bf16(2, 196, 96))  # Hiera's head dims: 96 (t/s/b+), 72 (l)
    assert not cudnn_applies(jnp.zeros((2, 49, 96)), jnp.zeros((2, 196, 96)))  # fp32: Pallas instead
    assert not cudnn_applies(bf16(2, 49, 100), bf16(2, 196, 100))
    # The dispatch: both kernel choices give XLA's result (cuDNN does not apply to fp32 operands).
    q, k, v, rel_h, rel_w = operands(2, 196, 14, 14, 64)  # the window14 case: its kernel is compiled
    ref = attention(q, k, v, rel_h, rel_w, ExecutionPolicy())
    for policy in (PALLAS, ExecutionPolicy(attention_kernel="cudnn", interpret=True)):
        assert max_abs(attention(q, k, v, rel_h, rel_w, policy), ref) <= TOL
        assert max_abs(attention(q, k, v, None, None, policy), attention(q, k, v, None, None, ExecutionPolicy())) <= TOL


@pytest.mark.parametrize("bias, dtype", [(True, jnp.float32), (False, jnp.bfloat16)], ids=["bias_f32", "bf16"])
def test_lowers_for_cuda_on_a_cpu_host(bias, dtype):
    """The only GPU evidence available without a GPU: Pallas lowers the kernel for CUDA (its
    Triton lowering accepts every op and tile shape) into XLA's Triton custom call. Compiling the
    Triton IR to PTX and running it happen on the GPU host."""
    spec = jax.ShapeDtypeStruct
    args = [spec((2, 196, 80), dtype), spec((2, 196, 80), dtype), spec((2, 196, 80), dtype)]
    if bias:
        args += [spec((2, 196, 14), dtype), spec((2, 196, 14), dtype)]
    lowered = jax.jit(flash_attention).trace(*args).lower(lowering_platforms=("cuda",))
    assert "__gpu$xla.gpu.triton" in lowered.as_text()


def triton_module(args, **kwargs) -> str:
    """The Triton IR (TTIR text) Pallas emits for ``flash_attention(*args, **kwargs)`` when lowering
    for CUDA. Reads it from Pallas' Triton lowering (a private function of jax 0.10)."""
    from jax._src.pallas.triton import lowering

    modules, lower = [], lowering.lower_jaxpr_to_triton_module

    def keep(*a, **k):
        result = lower(*a, **k)
        modules.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lowering, "lower_jaxpr_to_triton_module", keep)
        jax.jit(lambda *a: flash_attention(*a, **kwargs)).trace(*args).lower(lowering_platforms=("cuda",))
    (module,) = modules
    return module


@pytest.mark.parametrize(
    "case, warps",
    [("global_bf16", 8), ("window_f32_d80", 8), ("pooled_bf16", 4)],
)
def test_compiles_for_sm90_without_spills(case, warps, tmp_path, monkeypatch):
    """Further than lowering: the TTIR is compiled to PTX and a cubin for sm_90 (H100/H200) by
    the triton package (3.8 here, which torch brings; XLA compiles with its own Triton on the GPU
    host) and its ptxas, on this CPU-only host; ptxas reports no register spills with the warp
    counts the kernel picks (4 warps spill on the first two). bf16 tiles use tensor cores."""
    triton = pytest.importorskip("triton", reason="compiling the TTIR offline needs the triton package")
    from triton.backends.compiler import GPUTarget

    spec = jax.ShapeDtypeStruct
    bf16, f32 = jnp.bfloat16, jnp.float32
    args = {
        "global_bf16": [spec((2, 4096, 64), bf16)] * 3 + [spec((2, 4096, 64), bf16)] * 2,
        "window_f32_d80": [spec((2, 196, 80), f32)] * 3 + [spec((2, 196, 14), f32)] * 2,
        "pooled_bf16": [spec((2, 49, 64), bf16), spec((2, 196, 64), bf16), spec((2, 196, 64), bf16)],
    }[case]
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / f"{case}.ttir"
    path.write_text(triton_module(args))
    kernel = triton.compile(str(path), target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    ptx = kernel.asm["ptx"]
    assert kernel.asm["cubin"] and ".target sm_90a" in ptx
    tensor_cores = "wgmma.mma_async" in ptx or "mma.sync" in ptx  # wgmma needs 64-row tiles
    assert tensor_cores == (case != "window_f32_d80")  # fp32 stays IEEE: no tensor cores
    (tmp_path / "k.ptx").write_text(ptx)
    ptxas = Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    info = subprocess.run(
        [str(ptxas), "-v", "--gpu-name=sm_90a", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "0 bytes spill stores" in info, info


def jitted(module):
    """``module(x, policy)`` compiled (policy static): the models run as one program each."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda state, x, policy: nnx.merge(graphdef, state)(x, policy), static_argnums=2), state


def test_sam_encoder_with_the_kernel(tiny_model):
    """The tiny SAM 1 encoder (fixture weights, rel-pos tables randomised: a window-4 block over
    the 10x10 grid padded to 12x12, then a global 10x10 block) under a Pallas policy."""
    encode, state = jitted(tiny_model.image_encoder)
    x = jax.random.normal(jax.random.key(0), (2, 160, 160, 3))
    assert max_abs(encode(state, x, PALLAS), encode(state, x, ExecutionPolicy())) <= TOL


def test_sam2_trunk_with_the_kernel():
    """The SAM 2 test trunk shortened to five blocks (compile time): window 8; queries pooled
    into windows of 4; pooled into windows of 6 that pad the 8x8 grid; global; pooled into 2x2
    windows. Hiera has no bias; pooled blocks attend Q = K / 4 queries."""
    cfg = sam2_config.get_config("sam2_test").image_encoder.trunk
    cfg = dataclasses.replace(cfg, stages=(1, 1, 2, 1), global_att_blocks=(3,))
    trunk, state = jitted(Hiera(cfg, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (1, 128, 128, 3))
    ref = trunk(state, x, ExecutionPolicy())
    out = trunk(state, x, PALLAS)
    assert len(out) == len(ref)
    for a, b in zip(out, ref, strict=True):
        assert max_abs(a, b) <= TOL
