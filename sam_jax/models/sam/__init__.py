"""SAM 1 (``segment_anything`` 1.0): ViTDet image encoder, prompt encoder, two-way transformer and
mask decoder, one file per component as in the reference, composed by :mod:`.model`."""
