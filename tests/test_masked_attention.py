"""``sam_jax.ops.attention.masked_attention``: SAM 2's cross-attention to a memory bank with empty slots.

Against a float64 NumPy softmax over only the valid keys: blocked (query blocks, key chunks under a
running softmax, empty chunks skipped) and unblocked, with empty frame slots at the end and in the
middle, a partly filled pointer tail, several query blocks and large logits. Chunks without a valid
key are not computed: NaN in their keys and values does not reach the result.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.ops.attention import masked_attention as _masked_attention
from sam_jax.ops.policy import ExecutionPolicy

CHUNK = 64  # one memory frame's tokens (8 x 8)
BLOCKED = ExecutionPolicy(blocked=True, score_block=CHUNK * 4)  # 16 query rows per step
UNBLOCKED = ExecutionPolicy()
TOL = 2e-6


def masked_attention(q, k, v, valid, policy, chunk):
    return np.asarray(_masked_attention(*map(jnp.asarray, (q, k, v, valid)), policy, chunk=chunk))


def _softmax_reference(q, k, v, valid):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros(q.shape)
    for z in range(q.shape[0]):
        s = q[z] @ k[z, valid[z]].T
        w = np.exp(s - s.max(axis=-1, keepdims=True))
        out[z] = (w / w.sum(axis=-1, keepdims=True)) @ v[z, valid[z]]
    return out


def _bank(frames_valid, ptrs_valid, scale=1.0, seed=0, z=2, queries=CHUNK, d=16):
    rng = np.random.default_rng(seed)
    keys = CHUNK * len(frames_valid) + len(ptrs_valid)
    q = (scale * rng.standard_normal((z, queries, d))).astype(np.float32)
    k, v = (rng.standard_normal((z, keys, d)).astype(np.float32) for _ in range(2))
    valid = np.concatenate([np.repeat(frames_valid, CHUNK), ptrs_valid]).astype(bool)
    return q, k, v, np.broadcast_to(valid, (z, keys)).copy()


@pytest.mark.parametrize(
    "frames_valid, ptrs_valid",
    [
        ([1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]),  # a bank filling up
        ([1, 0, 1, 0, 1], [1] * 8),  # empty slots in the middle, every pointer
        ([1, 1, 1], []),  # no pointer tail
        ([0, 0, 0], [0, 1, 1, 0]),  # only pointers
    ],
)
@pytest.mark.parametrize("policy", [BLOCKED, UNBLOCKED], ids=["blocked", "unblocked"])
def test_equals_the_softmax_over_valid_keys(frames_valid, ptrs_valid, policy):
    q, k, v, valid = _bank(frames_valid, ptrs_valid)
    got = masked_attention(q, k, v, valid, policy, chunk=CHUNK)
    err = np.max(np.abs(got - _softmax_reference(q, k, v, valid)))
    assert err <= TOL, err


def test_large_logits_and_odd_query_count():
    q, k, v, valid = _bank([1, 0, 1, 1], [1, 0, 1], scale=30.0, queries=50)
    got = masked_attention(q, k, v, valid, BLOCKED, chunk=CHUNK)
    assert np.all(np.isfinite(got))
    # Logits up to ~500: their fp32 dot products alone carry ~3e-5 of rounding (both paths).
    assert np.max(np.abs(got - _softmax_reference(q, k, v, valid))) <= 5e-5
    assert np.max(np.abs(got - masked_attention(q, k, v, valid, UNBLOCKED, chunk=CHUNK))) <= 5e-5


def test_empty_chunks_are_not_computed():
    q, k, v, valid = _bank([1, 0, 1, 0], [1, 0])
    empty = ~np.repeat([1, 0, 1, 0], CHUNK).astype(bool)
    k[:, np.concatenate([empty, [False, False]])] = np.nan
    v[:, np.concatenate([empty, [False, False]])] = np.nan
    got = masked_attention(q, k, v, valid, BLOCKED, chunk=CHUNK)
    assert np.all(np.isfinite(got))
    q2, k2, v2, valid2 = _bank([1, 0, 1, 0], [1, 0])
    assert np.max(np.abs(got - _softmax_reference(q2, k2, v2, valid2))) <= TOL
