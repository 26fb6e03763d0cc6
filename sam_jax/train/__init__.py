"""Training and fine-tuning SAM: losses, prompt sampling, the sharded train step, the loop."""
