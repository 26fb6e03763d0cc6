"""``python -m sam_jax``: the ``sam-jax`` command line."""

from sam_jax.cli import main

raise SystemExit(main())
