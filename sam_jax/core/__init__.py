"""The jit-compiled functional core: pure functions of ``(graphdef, params, inputs)`` (image ->
features pytree; features + prompts -> mask logits), and the host-side prompt rules they need."""
