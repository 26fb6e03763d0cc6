"""Model families: one subpackage per family over shared layers (see ``README.md`` beside this file).

``layers`` holds pieces every family uses; ``sam/`` is SAM 1 (ViT encoder); ``sam2/`` is SAM 2;
``registry`` maps a family tag (stored in ``config.json``) to its config class and builder.
"""
