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
import math
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
class RoPEAttentionConfig:
    """``sam2.modeling.sam.transformer.RoPEAttention``: attention with 2-D axial rotary encoding.

    ``feat_sizes`` is ``(end_x, end_y)`` of the precomputed rotations (a square grid of another size
    is recomputed at call time, as the reference does); ``rope_k_repeat`` repeats the query grid's
    rotations over the keys (cross-attention to several memory frames of that grid). ``dropout`` is
    training-only and ignored here.
    """

    embedding_dim: int = 256
    num_heads: int = 1
    downsample_rate: int = 1
    kv_in_dim: int | None = None
    rope_theta: float = 10000.0
    rope_k_repeat: bool = False
    feat_sizes: tuple[int, int] = (64, 64)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        inner = self.embedding_dim // self.downsample_rate
        if inner % self.num_heads or (inner // self.num_heads) % 4:
            raise ValueError(
                f"RoPE attention needs a head width ({inner} / {self.num_heads} heads) that is a multiple of 4"
            )

    @property
    def internal_dim(self) -> int:
        return self.embedding_dim // self.downsample_rate

    @property
    def kv_dim(self) -> int:
        return self.embedding_dim if self.kv_in_dim is None else self.kv_in_dim


@dataclasses.dataclass(frozen=True)
class MemoryAttentionConfig:
    """``MemoryAttention`` and its (cloned) ``MemoryAttentionLayer``: self-attention of the current
    frame's tokens, cross-attention to the memory, an MLP; pre-norm, LayerNorm eps 1e-5 (PyTorch's
    default). Defaults are what every released yaml builds (the layer's constructor has none)."""

    d_model: int = 256
    num_layers: int = 4
    pos_enc_at_input: bool = True
    batch_first: bool = True
    activation: str = "relu"
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    pos_enc_at_cross_attn_queries: bool = False
    self_attention: RoPEAttentionConfig = RoPEAttentionConfig()
    cross_attention: RoPEAttentionConfig = RoPEAttentionConfig(rope_k_repeat=True, kv_in_dim=64)
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if not self.batch_first:
            raise ValueError("only batch_first=True (every released config) is supported")
        for name in ("self_attention", "cross_attention"):
            if getattr(self, name).embedding_dim != self.d_model:
                raise ValueError(f"{name}.embedding_dim must equal d_model {self.d_model}")


@dataclasses.dataclass(frozen=True)
class MaskDownSamplerConfig:
    """``MaskDownSampler``: ``log_stride(total_stride)`` blocks of conv (channels x stride**2),
    LayerNorm2d (eps 1e-6), GELU, then a 1x1 conv to ``embed_dim``. Defaults: the released yamls'
    (the constructor's are kernel 4, stride 4, padding 0)."""

    embed_dim: int = 256
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    total_stride: int = 16
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.stride**self.num_layers != self.total_stride:
            raise ValueError(f"total_stride {self.total_stride} must be a power of stride {self.stride}")

    @property
    def num_layers(self) -> int:
        return int(math.log2(self.total_stride) // math.log2(self.stride))


@dataclasses.dataclass(frozen=True)
class CXBlockConfig:
    """``CXBlock`` (ConvNeXt): depthwise conv, LayerNorm2d (eps 1e-6), Linear 4x, GELU, Linear,
    layer scale ``gamma``; residual. ``drop_path`` is training-only."""

    dim: int = 256
    kernel_size: int = 7
    padding: int = 3
    layer_scale_init_value: float = 1e-6
    use_dwconv: bool = True
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class MemoryEncoderConfig:
    """``MemoryEncoder(out_dim, mask_downsampler, fuser=Fuser(CXBlock, num_layers), position_encoding)``:
    ``in_dim``-channel image features plus the downsampled mask, fused, projected to ``out_dim``,
    with the sine encoding (``PositionEmbeddingSine(pos_num_pos_feats, ...)``) of the result."""

    out_dim: int = 64
    in_dim: int = 256
    mask_downsampler: MaskDownSamplerConfig = MaskDownSamplerConfig()
    fuser_layer: CXBlockConfig = CXBlockConfig()
    fuser_num_layers: int = 2
    fuser_input_projection: bool = False
    pos_num_pos_feats: int = 64
    pos_temperature: float = 10000.0
    pos_normalize: bool = True
    pos_scale: float | None = None

    def __post_init__(self) -> None:
        if self.mask_downsampler.embed_dim != self.in_dim or self.fuser_layer.dim != self.in_dim:
            raise ValueError(
                f"mask_downsampler.embed_dim ({self.mask_downsampler.embed_dim}) and fuser_layer.dim "
                f"({self.fuser_layer.dim}) must equal in_dim ({self.in_dim})"
            )


@dataclasses.dataclass(frozen=True)
class Sam2Config:
    """The whole model (``SAM2Base``'s image path, its video settings and memory modules).

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
    # Video (memory) settings, read by the memory modules (:mod:`sam_jax.models.sam2.video_model`).
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
    # Memory-bank settings at evaluation (SAM2Base's defaults, which build_sam2 keeps;
    # build_sam2_video_predictor overrides binarize_mask_from_pts_for_mem_enc to True).
    max_cond_frames_in_attn: int = -1
    memory_temporal_stride_for_eval: int = 1
    binarize_mask_from_pts_for_mem_enc: bool = False
    non_overlap_masks_for_mem_enc: bool = False
    memory_attention: MemoryAttentionConfig = MemoryAttentionConfig()
    memory_encoder: MemoryEncoderConfig = MemoryEncoderConfig()
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        d = self.image_encoder.neck.d_model
        att, enc = self.memory_attention, self.memory_encoder
        if att.d_model != d or enc.in_dim != d:
            raise ValueError(
                f"memory_attention.d_model ({att.d_model}) and memory_encoder.in_dim ({enc.in_dim}) "
                f"must equal the neck's d_model ({d})"
            )
        if att.cross_attention.kv_dim != self.mem_dim:
            raise ValueError(
                f"memory_attention.cross_attention.kv_in_dim ({att.cross_attention.kv_dim}) must equal "
                f"the memory width {self.mem_dim}"
            )
        if d % self.mem_dim:
            raise ValueError(f"the memory width {self.mem_dim} must divide d_model {d} (object-pointer tokens)")

    @property
    def img_size(self) -> int:
        return self.image_size

    @property
    def hidden_dim(self) -> int:
        """``SAM2Base.hidden_dim``: the neck's width."""
        return self.image_encoder.neck.d_model

    @property
    def mem_dim(self) -> int:
        """``SAM2Base.mem_dim``: the memory encoder's output width (its ``out_proj``; the input
        width when there is none)."""
        return self.memory_encoder.out_dim

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
        nested = ("image_encoder", "prompt_encoder", "mask_decoder", "memory_attention", "memory_encoder")
        top = tuples({k: v for k, v in d.items() if k not in nested})
        # Configs written before the memory modules were ported carry neither: the released defaults.
        memory = {}
        if "memory_attention" in d:
            att = dict(d["memory_attention"])
            for name in ("self_attention", "cross_attention"):
                att[name] = RoPEAttentionConfig(**tuples(att[name]))
            memory["memory_attention"] = MemoryAttentionConfig(**att)
        if "memory_encoder" in d:
            me = dict(d["memory_encoder"])
            me["mask_downsampler"] = MaskDownSamplerConfig(**me["mask_downsampler"])
            me["fuser_layer"] = CXBlockConfig(**me["fuser_layer"])
            memory["memory_encoder"] = MemoryEncoderConfig(**me)
        return cls(
            image_encoder=ImageEncoderConfig(
                trunk=HieraConfig(**tuples(enc["trunk"])),
                neck=FpnNeckConfig(**tuples(enc["neck"])),
                scalp=enc["scalp"],
            ),
            prompt_encoder=PromptEncoderConfig(**d["prompt_encoder"]),
            mask_decoder=Sam2MaskDecoderConfig(**d["mask_decoder"]),
            **memory,
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
        # Memory: 16-wide (two object-pointer tokens per pointer), RoPE over the 8x8 grid with two
        # heads of width 16 (the released models use one head of 256).
        memory_attention=MemoryAttentionConfig(
            d_model=dim,
            num_layers=2,
            dim_feedforward=64,
            self_attention=RoPEAttentionConfig(embedding_dim=dim, num_heads=2, feat_sizes=(8, 8)),
            cross_attention=RoPEAttentionConfig(
                embedding_dim=dim, num_heads=2, feat_sizes=(8, 8), rope_k_repeat=True, kv_in_dim=16
            ),
        ),
        memory_encoder=MemoryEncoderConfig(
            out_dim=16,
            in_dim=dim,
            mask_downsampler=MaskDownSamplerConfig(embed_dim=dim),
            fuser_layer=CXBlockConfig(dim=dim),
            pos_num_pos_feats=16,
        ),
        add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
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
