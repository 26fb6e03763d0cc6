"""Checkpoint conversion: official SAM ``.pth``, transformers SAM and MedSAM -> sam_jax.

This folder installs as ``sam_jax.convert`` (see ``pyproject.toml``): its source stays in the
repository's top-level ``convert/``, the one place besides tests and benchmarks that imports torch,
under a name that cannot collide with another package's ``convert``.

``sam_jax.convert.rules`` is NumPy-only (tests and the loader of fixtures use it without torch);
the readers in ``sam_jax.convert.readers`` import torch lazily.
"""
