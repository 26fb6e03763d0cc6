"""Files shipped inside the package: the demo model (``demo/``, a sam_jax checkpoint directory).

The demo model is a small SAM (same architecture, tiny ViT) trained from scratch on synthetic
shapes by :mod:`sam_jax.train` (recipe in :mod:`sam_jax.train.presets`). It is what the command
line uses when no checkpoint is given, so the package works without downloading weights. It
segments shapes on textured backgrounds; it knows nothing about natural images.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).parent / "demo"


def demo_checkpoint_dir() -> Path:
    """Directory of the bundled demo model, for :func:`sam_jax.load_sam`."""
    if not (DEMO_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the bundled demo model is missing from {DEMO_DIR}; reinstall sam-jax")
    return DEMO_DIR
