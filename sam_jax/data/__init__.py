"""Training data: synthetic shapes, image folders with masks, COCO annotations, grain pipelines."""
