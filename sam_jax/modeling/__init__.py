"""Flax NNX modules of SAM, one file per component (as in ``segment_anything.modeling``)."""
