"""Stateful predictors (the reference's APIs) as thin wrappers over :mod:`sam_jax.core`."""
