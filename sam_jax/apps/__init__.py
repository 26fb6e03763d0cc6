"""Applications built on the sam_jax library (each in its own subpackage, imported on demand).

- :mod:`sam_jax.apps.annotate`: a local web annotation tool (``sam-jax annotate``).
"""
