"""Frozen SAM 2 / 2.1 configurations and the registry of the eight released models.

Values mirror what ``sam2.build_sam.build_sam2(<yaml>)`` (``sam2==1.1.0``) instantiates: the yaml
files under ``sam2/configs/sam2`` and ``sam2/configs/sam2.1``, the constructor defaults they leave
alone (``Hiera``, ``FpnNeck``, ``SAM2Base._build_sam_heads``), and the three overrides that
``build_sam2`` adds by default (``apply_postprocessing=True``: dynamic multimask via stability,
delta 0.05, threshold 0.98). Nothing about model shape is decided anywhere else. This module
imports no JAX, so tooling can read configurations cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sam_jax.models.sam.config import MaskDecoderConfig, PromptEncoderConfig

# SAM2Transforms: images are scaled to [0, 1], then normalised with ImageNet statistics.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk (``sam2.modeling.backbones.hieradet.Hiera``); defaults are the constructor's."""

    embed_dim: int = 96
    num_heads: int = 1
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    stages: tuple[int, ...] = (2, 3, 16, 3)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    mlp_ratio: float = 4.0
    in_chans: int = 3
    # PatchEmbed: a 7x7 convolution, stride 4, padding 3.
    patch_kernel_size: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.window_spec):
            raise ValueError(f"stages {self.stages} and window_spec {self.window_spec} must have the same length")
        if not 0 <= self.q_pool <= len(self.stages) - 1:
            raise ValueError(f"q_pool must be in [0, {len(self.stages) - 1}], got {self.q_pool}")

    @property
    def depth(self) -> int:
        return sum(self.stages)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Index of the last block of each stage (their outputs are the trunk's outputs)."""
        return tuple(sum(self.stages[: i + 1]) - 1 for i in range(len(self.stages)))

    @property
    def q_pool_blocks(self) -> tuple[int, ...]:
        """Blocks that pool their queries (the first block of stages 2..q_pool+1)."""
        return tuple(end + 1 for end in self.stage_ends[:-1])[: self.q_pool]

    def block_specs(self) -> tuple[tuple[int, int, int, int, bool], ...]:
        """``(dim, dim_out, num_heads, window_size, q_pool)`` per block, as ``Hiera.__init__`` derives them.

        The window size lags by a block: the first block of a stage still uses the previous
        stage's window (and pools it by ``q_stride``). ``window_size`` 0 means global attention.
        """
        specs = []
        dim, heads, stage = self.embed_dim, self.num_heads, 1
        for i in range(self.depth):
            dim_out = dim
            window = 0 if i in self.global_att_blocks else self.window_spec[stage - 1]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * self.dim_mul)
                heads = int(heads * self.head_mul)
                stage += 1
            specs.append((dim, dim_out, heads, window, i in self.q_pool_blocks))
            dim = dim_out
        return tuple(specs)

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Output channels of each stage, lowest resolution first (``Hiera.channel_list``)."""
        specs = self.block_specs()
        return tuple(specs[i][1] for i in self.stage_ends[::-1])


@dataclasses.dataclass(frozen=True)
class FpnNeckConfig:
    """FPN neck (``FpnNeck``) and its sine position encoding (``PositionEmbeddingSine``)."""

    d_model: int = 256
    backbone_channel_list: tuple[int, ...] = (768, 384, 192, 96)
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    fpn_interp_model: str = "nearest"
    fuse_type: str = "sum"
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    # PositionEmbeddingSine(num_pos_feats=256, normalize=True, scale=None -> 2*pi, temperature=10000)
    pos_num_pos_feats: int = 256
    pos_temperature: float = 10000.0
    pos_normalize: bool = True
    pos_scale: float | None = None

    def __post_init__(self) -> None:
        if self.fpn_interp_model not in ("nearest", "bilinear"):
            raise ValueError(f"fpn_interp_model must be 'nearest' or 'bilinear', got {self.fpn_interp_model!r}")
        if self.fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {self.fuse_type!r}")


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
    """``ImageEncoder(trunk, neck, scalp)``: ``scalp`` lowest-resolution levels are dropped."""

    trunk: HieraConfig = HieraConfig()
    neck: FpnNeckConfig = FpnNeckConfig()
    scalp: int = 1

    def __post_init__(self) -> None:
        if self.trunk.channel_list != self.neck.backbone_channel_list:
            raise ValueError(
                f"trunk channels {self.trunk.channel_list} do not match the neck's {self.neck.backbone_channel_list}"
            )


@dataclasses.dataclass(frozen=True)
class Sam2MaskDecoderConfig(MaskDecoderConfig):
    """SAM 2 mask decoder (``sam2.modeling.sam.mask_decoder.MaskDecoder``) as ``_build_sam_heads``
    builds it: SAM 1's decoder fields (the two-way transformer is SAM 1's) plus SAM 2's heads."""

    use_high_res_features: bool = True
    iou_prediction_use_sigmoid: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_multimask_token_for_obj_ptr: bool = True

    @property
    def transformer(self) -> MaskDecoderConfig:
        """The two-way transformer's fields, as the SAM 1 config that ``TwoWayTransformer`` takes."""
        return MaskDecoderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MaskDecoderConfig)})


@dataclasses.dataclass(frozen=True)
class Sam2Config:
    """The whole model (``SAM2Base``'s image path plus its scalar video settings).

    ``name`` is the registry key it was built from; ``family`` tags the model family for a
    registry shared with SAM 1. Decoder flags live in :attr:`mask_decoder` only (the reference
    passes ``SAM2Base``'s copies through to it).
    """

    name: str
    image_encoder: ImageEncoderConfig
    prompt_encoder: PromptEncoderConfig
    mask_decoder: Sam2MaskDecoderConfig
    family: str = "sam2"
    image_size: int = 1024
    backbone_stride: int = 16
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    directly_add_no_mem_embed: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    no_obj_embed_spatial: bool = False
    use_mask_input_as_output_without_sam: bool = True
    # Video (memory) settings, read by the memory modules that are still to come.
    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = False
    proj_tpos_enc_in_obj_ptrs: bool = False
    use_signed_tpos_enc_to_obj_ptrs: bool = False
    only_obj_ptrs_in_the_past_for_eval: bool = True
    use_mlp_for_obj_ptr_proj: bool = True
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    mask_threshold: float = 0.0

    @property
    def img_size(self) -> int:
        return self.image_size

    @property
    def use_high_res_features_in_sam(self) -> bool:
        return self.mask_decoder.use_high_res_features

    @property
    def num_feature_levels(self) -> int:
        """Backbone levels the SAM heads read: stride 4, 8 and 16 with high-res features, else 16."""
        return 3 if self.use_high_res_features_in_sam else 1

    @property
    def pred_obj_scores(self) -> bool:
        return self.mask_decoder.pred_obj_scores

    @property
    def iou_prediction_use_sigmoid(self) -> bool:
        return self.mask_decoder.iou_prediction_use_sigmoid

    @property
    def use_multimask_token_for_obj_ptr(self) -> bool:
        return self.mask_decoder.use_multimask_token_for_obj_ptr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sam2Config:
        """Inverse of :meth:`to_dict` (lists from JSON become tuples)."""

        def tuples(sub: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}

        enc = d["image_encoder"]
        top = tuples({k: v for k, v in d.items() if k not in ("image_encoder", "prompt_encoder", "mask_decoder")})
        return cls(
            image_encoder=ImageEncoderConfig(
                trunk=HieraConfig(**tuples(enc["trunk"])),
                neck=FpnNeckConfig(**tuples(enc["neck"])),
                scalp=enc["scalp"],
            ),
            prompt_encoder=PromptEncoderConfig(**d["prompt_encoder"]),
            mask_decoder=Sam2MaskDecoderConfig(**d["mask_decoder"]),
            **top,
        )


def _channels(embed_dim: int, num_stages: int = 4) -> tuple[int, ...]:
    """FpnNeck's ``backbone_channel_list``: the trunk's stage widths, lowest resolution first."""
    return tuple(embed_dim * 2**i for i in reversed(range(num_stages)))


def _sam2(name: str, trunk: HieraConfig, *, v2_1: bool) -> Sam2Config:
    """One released model: only the trunk differs between sizes; SAM 2.1 differs from SAM 2 in
    the video settings (``no_obj_embed_spatial`` and the object pointers' temporal encoding)."""
    return Sam2Config(
        name=name,
        image_encoder=ImageEncoderConfig(
            trunk=trunk, neck=FpnNeckConfig(backbone_channel_list=_channels(trunk.embed_dim))
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=256, image_embedding_size=1024 // 16, input_image_size=1024),
        mask_decoder=Sam2MaskDecoderConfig(),
        no_obj_embed_spatial=v2_1,
        add_tpos_enc_to_obj_ptrs=v2_1,
        proj_tpos_enc_in_obj_ptrs=v2_1,
        use_signed_tpos_enc_to_obj_ptrs=v2_1,
    )


_TRUNKS = {
    # sam2*_hiera_t.yaml / _s.yaml / _b+.yaml / _l.yaml (fields not in the yaml are Hiera's defaults).
    "tiny": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                        window_pos_embed_bkg_spatial_size=(7, 7)),
    "small": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                         window_pos_embed_bkg_spatial_size=(7, 7)),
    "base_plus": HieraConfig(embed_dim=112, num_heads=2),
    "large": HieraConfig(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                         window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}  # fmt: skip

_YAML_ABBREVIATIONS = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
# Registry key -> the yaml file ``build_sam2`` reads for it (inside the installed ``sam2`` package).
YAML_FILES: dict[str, str] = {
    **{f"sam2_hiera_{size}": f"configs/sam2/sam2_hiera_{a}.yaml" for size, a in _YAML_ABBREVIATIONS.items()},
    **{f"sam2.1_hiera_{size}": f"configs/sam2.1/sam2.1_hiera_{a}.yaml" for size, a in _YAML_ABBREVIATIONS.items()},
}

MODEL_TYPES = tuple(YAML_FILES)


def _test(name: str) -> Sam2Config:
    """A small model with every code path of the real ones, at 128 px.

    Patch grid 32 (stride 4); stage grids 32, 16, 8, 4. The first block of each later stage pools its
    queries inside the previous stage's window (8 -> 4, 4 -> 2, 6 -> 3); stage 3's window 6 does
    not divide its 8x8 grid, so windows are padded (also under pooling), as hiera_t's window 14
    pads its 64x64 grid; block 4 is global. The position-embedding background (4x4) is resized
    bicubically to 32x32.
    """
    trunk = HieraConfig(
        embed_dim=16,
        num_heads=1,
        stages=(1, 2, 3, 2),
        global_att_blocks=(4,),
        window_pos_embed_bkg_spatial_size=(4, 4),
        window_spec=(8, 4, 6, 2),
    )
    dim = 32
    return Sam2Config(
        name=name,
        image_encoder=ImageEncoderConfig(
            trunk=trunk, neck=FpnNeckConfig(d_model=dim, backbone_channel_list=_channels(16), pos_num_pos_feats=dim)
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=dim, image_embedding_size=128 // 16, input_image_size=128),
        # SAM2Base._build_sam_heads fixes the decoder's MLP width 2048, 8 heads, IoU head 256 wide
        # for any transformer_dim: only the width follows the neck.
        mask_decoder=Sam2MaskDecoderConfig(transformer_dim=dim),
        image_size=128,
        no_obj_embed_spatial=True,
    )


CONFIGS: dict[str, Sam2Config] = {
    **{f"sam2_hiera_{size}": _sam2(f"sam2_hiera_{size}", trunk, v2_1=False) for size, trunk in _TRUNKS.items()},
    **{f"sam2.1_hiera_{size}": _sam2(f"sam2.1_hiera_{size}", trunk, v2_1=True) for size, trunk in _TRUNKS.items()},
    # Test config: 128 px, a 16-wide Hiera with stages (1, 2, 3, 2), a 32-wide neck, prompt encoder and decoder.
    "sam2_test": _test("sam2_test"),
}


def get_config(name: str) -> Sam2Config:
    """Look up a registry entry by name (``sam2_hiera_tiny`` ... ``sam2.1_hiera_large``, ``sam2_test``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SAM 2 model type {name!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[name]
