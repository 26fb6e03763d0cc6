"""``sam-jax annotate``: click-to-segment annotation of a folder of images in the browser.

A small Starlette app (:func:`sam_jax.apps.annotate.server.create_app`) serves a static page
(``static/``) and a JSON API over one SAM model:

- :mod:`.paths`: which files may be read (images inside the folder) and written (the output folder).
- :mod:`.rle`: COCO run-length encoding, validated before anything decodes client data.
- :mod:`.validation`: checks of every request body (prompts, annotation documents).
- :mod:`.store`: per-image COCO-style JSON written atomically, and the folder-wide COCO export.
- :mod:`.engine`: the model on one worker thread, image embeddings cached on disk, prefetch.
- :mod:`.server`: the routes, error handling and request guards.
- :mod:`.cli`: the ``annotate`` and ``annotate-export`` subcommands.

Nothing heavy is imported here, so ``sam-jax --help`` stays fast.
"""
