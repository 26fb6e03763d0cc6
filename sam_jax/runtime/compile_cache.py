"""JAX's persistent compilation cache, on by default for sam_jax's entry points.

Location: ``$SAM_JAX_CACHE_DIR`` if set, else ``~/.cache/sam_jax/jax``. Opt out with
``SAM_JAX_COMPILATION_CACHE=0``. If the application already configured
``jax_compilation_cache_dir``, it is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_DONE = False


def default_cache_dir() -> Path:
    return Path(os.environ.get("SAM_JAX_CACHE_DIR", Path.home() / ".cache" / "sam_jax" / "jax"))


def enable_compilation_cache() -> Path | None:
    """Turn the persistent cache on (once per process); returns its directory, or None if off."""
    global _DONE
    if os.environ.get("SAM_JAX_COMPILATION_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    if not _DONE:
        path = default_cache_dir()
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        # Decoder programs compile in well under the 1 s default threshold; cache them too.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
        _DONE = True
    return Path(jax.config.jax_compilation_cache_dir)
