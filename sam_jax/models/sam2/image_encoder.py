"""SAM 2 image encoder: Hiera trunk + FPN neck (reference ``ImageEncoder`` in
``sam2/modeling/backbones/image_encoder.py``)."""

from __future__ import annotations

from flax import nnx
from jaxtyping import Array, Float

from sam_jax.models.sam2.config import ImageEncoderConfig
from sam_jax.models.sam2.hiera import Hiera
from sam_jax.models.sam2.neck import FpnNeck
from sam_jax.ops.policy import XLA, ExecutionPolicy


class ImageEncoder(nnx.Module):
    """``(B, S, S, 3)`` normalised image -> the reference's feature dict, channels-last:

    - ``backbone_fpn``: FPN levels, highest resolution first; with ``scalp=1`` and the released
      configs, strides 4, 8, 16: ``[(B, S/4, S/4, D), (B, S/8, S/8, D), (B, S/16, S/16, D)]``
      (the stride-32 level still feeds the top-down path, then is dropped);
    - ``vision_pos_enc``: their sine position encodings, same shapes;
    - ``vision_features``: the last (lowest-resolution) kept level, ``backbone_fpn[-1]``.
    """

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.trunk = Hiera(cfg.trunk, rngs=rngs)
        self.neck = FpnNeck(cfg.neck, rngs=rngs)

    def __call__(
        self, x: Float[Array, "B S S 3"], policy: ExecutionPolicy = XLA
    ) -> dict[str, Float[Array, "B h w D"] | list]:
        features, pos = self.neck(self.trunk(x, policy))
        if self.cfg.scalp > 0:
            features, pos = features[: -self.cfg.scalp], pos[: -self.cfg.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
