"""SAM 1 composed from its parts (reference ``modeling/sam.py``)."""

from __future__ import annotations

from flax import nnx

from sam_jax.models.sam.config import SamConfig
from sam_jax.models.sam.image_encoder import ImageEncoderViT
from sam_jax.models.sam.mask_decoder import MaskDecoder
from sam_jax.models.sam.prompt_encoder import PromptEncoder


class Sam(nnx.Module):
    """Segment Anything: the image encoder, prompt encoder and mask decoder it is given.

    ``Sam(config, rngs=rngs)`` builds the parts ``config`` describes with random weights;
    ``Sam(config, image_encoder=..., prompt_encoder=..., mask_decoder=...)`` composes given parts
    (as the reference's ``Sam(image_encoder, prompt_encoder, mask_decoder)``), for instance an
    encoder of another design with the same embedding size.
    """

    def __init__(
        self,
        config: SamConfig,
        *,
        rngs: nnx.Rngs | None = None,
        image_encoder: nnx.Module | None = None,
        prompt_encoder: PromptEncoder | None = None,
        mask_decoder: MaskDecoder | None = None,
    ) -> None:
        if rngs is None and None in (image_encoder, prompt_encoder, mask_decoder):
            raise TypeError("Sam needs rngs to build the parts that are not given")
        self.config = config
        self.image_encoder = image_encoder or ImageEncoderViT(config.image_encoder, rngs=rngs)
        self.prompt_encoder = prompt_encoder or PromptEncoder(config.prompt_encoder, rngs=rngs)
        self.mask_decoder = mask_decoder or MaskDecoder(config.mask_decoder, rngs=rngs)


def build(config: SamConfig, rngs: nnx.Rngs) -> Sam:
    """The family's builder for the registry: a model of ``config`` with random weights."""
    return Sam(config, rngs=rngs)
