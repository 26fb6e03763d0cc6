"""SAM 1's frozen model configurations and its vit_b / vit_l / vit_h table (family tag ``"sam"``).

Values mirror ``segment_anything.build_sam._build_sam`` exactly; nothing about model shape is
decided anywhere else. This module imports no JAX so that tooling (fixture scripts, the converter)
can read configurations cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
    """ViTDet-style image encoder (``ImageEncoderViT``)."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Side of the patch grid (64 for a 1024 input with 16-pixel patches)."""
        return self.img_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig:
    """Prompt encoder (``PromptEncoder``): random-Fourier PE, point/box/mask embeddings."""

    embed_dim: int = 256
    image_embedding_size: int = 64
    input_image_size: int = 1024
    mask_in_chans: int = 16

    @property
    def mask_input_size(self) -> int:
        """Side of the dense mask prompt (4x the embedding grid: 256)."""
        return 4 * self.image_embedding_size


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig:
    """Two-way transformer plus the mask decoder heads (``MaskDecoder``)."""

    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """The whole model. ``name`` is the registry key it was built from."""

    family: ClassVar[str] = "sam"  # the registry's family tag, written to config.json beside this
    name: str
    image_encoder: ImageEncoderConfig
    prompt_encoder: PromptEncoderConfig
    mask_decoder: MaskDecoderConfig
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    mask_threshold: float = 0.0

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamConfig:
        """Inverse of :meth:`to_dict` (lists from JSON become tuples)."""
        enc = dict(d["image_encoder"])
        enc["global_attn_indexes"] = tuple(enc["global_attn_indexes"])
        return cls(
            name=d["name"],
            image_encoder=ImageEncoderConfig(**enc),
            prompt_encoder=PromptEncoderConfig(**d["prompt_encoder"]),
            mask_decoder=MaskDecoderConfig(**d["mask_decoder"]),
            pixel_mean=tuple(d["pixel_mean"]),
            pixel_std=tuple(d["pixel_std"]),
            mask_threshold=float(d["mask_threshold"]),
        )


def _sam(name: str, embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> SamConfig:
    """The reference's ``_build_sam``: only the encoder differs between sizes."""
    return SamConfig(
        name=name,
        image_encoder=ImageEncoderConfig(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn
        ),
        prompt_encoder=PromptEncoderConfig(),
        mask_decoder=MaskDecoderConfig(),
    )


def _tiny(name: str, img_size: int, window_size: int) -> SamConfig:
    """A few-thousand-parameter model with every code path of the real ones.

    The patch grid (img_size / 16) is not a multiple of the window, so windowed attention pads,
    and block 1 is global, so both rel-pos table sizes are exercised.
    """
    dim = 32
    return SamConfig(
        name=name,
        image_encoder=ImageEncoderConfig(
            img_size=img_size,
            embed_dim=48,
            depth=2,
            num_heads=2,
            out_chans=dim,
            window_size=window_size,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoderConfig(
            embed_dim=dim, image_embedding_size=img_size // 16, input_image_size=img_size
        ),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=dim,
            transformer_mlp_dim=64,
            transformer_num_heads=4,
            iou_head_hidden_dim=32,
        ),
    )


def _demo(name: str) -> SamConfig:
    """The bundled demo model (:mod:`sam_jax.assets`): SAM's architecture at 128 px, patch 8
    (a 16x16 grid), four blocks alternating windowed (window 8) and global attention, and a
    128-wide decoder; trained from scratch on synthetic shapes (:mod:`sam_jax.train.presets`)."""
    dim = 128
    return SamConfig(
        name=name,
        image_encoder=ImageEncoderConfig(
            img_size=128,
            patch_size=8,
            embed_dim=96,
            depth=4,
            num_heads=4,
            out_chans=dim,
            window_size=8,
            global_attn_indexes=(1, 3),
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=dim, image_embedding_size=16, input_image_size=128),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=dim, transformer_mlp_dim=4 * dim, transformer_num_heads=4, iou_head_hidden_dim=dim
        ),
    )


CONFIGS: dict[str, SamConfig] = {
    "vit_b": _sam("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _sam("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _sam("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    # Test configs: 10x10 grid with window 4 (pads to 12).
    "tiny": _tiny("tiny", img_size=160, window_size=4),
    # The bundled demo model's architecture (sam-jax train --preset demo builds it).
    "demo": _demo("demo"),
}
MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


def get_config(name: str) -> SamConfig:
    """Look up a registry entry by name (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``, ``demo``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model type {name!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[name]
