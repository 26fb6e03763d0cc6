"""SAM 2 / 2.1 (Meta's ``sam2`` 1.1.0): Hiera trunk, FPN neck, high-resolution mask decoder and
(later) the video memory modules. Arrives here as new files beside :mod:`sam_jax.models.sam`.

- ``config``: frozen ``Sam2Config`` (``family="sam2"``) and the registry of the eight released
  models (``sam2_hiera_*``, ``sam2.1_hiera_*``) plus ``sam2_test``;
- ``hiera``: the trunk (windowed position embedding, multi-scale blocks with query pooling);
- ``position_encoding``: the sine encoding of the FPN levels;
- ``neck``: the FPN neck; ``image_encoder``: trunk + neck, returning the reference's feature dict;
- ``mask_decoder``: SAM 1's two-way transformer with object scores, high-res features and dynamic
  multimask output. The prompt encoder is SAM 1's (:mod:`sam_jax.models.sam.prompt_encoder`);
- ``model``: ``Sam2``, the parts composed under ``SAM2Base``'s names plus ``no_mem_embed``, with the
  ``embed`` / ``decode_prompts`` methods the core dispatches on, and ``build`` for the registry;
- ``transforms``: host-side ``SAM2Transforms`` (the image squashed to the square input, antialiased;
  prompt coordinates into that frame).

Weights convert with :mod:`sam_jax.convert.sam2_rules`.
"""
