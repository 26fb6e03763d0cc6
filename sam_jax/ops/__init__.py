"""Backend-specific execution behind one seam: an :class:`~sam_jax.ops.policy.ExecutionPolicy`
chosen from the mesh's platform decides how model code's heavy operations run (CPU cache-blocked
loops, plain XLA, a fused Pallas attention kernel or cuDNN's on GPUs); the math is the same under
every policy."""
