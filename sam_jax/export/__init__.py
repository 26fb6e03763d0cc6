"""Portable export: a model's image encoder and prompt+mask decoder as ``jax.export`` artifacts
(serialized StableHLO with symbolic batch, prompt and point counts), its weights and a manifest
(:mod:`.writer`, ``sam-jax export``), and a loader that runs them with no sam_jax model code
(:mod:`.runtime`).

This package's ``__init__`` imports nothing, so ``import sam_jax.export.runtime`` pulls in JAX,
NumPy and the host-side geometry only.
"""
