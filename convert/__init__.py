"""Checkpoint conversion: official SAM ``.pth``, transformers SAM and MedSAM -> sam_jax.

``convert.rules`` is NumPy-only (tests and the loader of fixtures use it without torch); the
readers in ``convert.readers`` import torch lazily.
"""
