"""Build the unmodified SAM 2 reference (Meta's ``sam2==1.1.0``) and fill it with random weights.

Needs torch and sam2 (``pip install hydra-core iopath tqdm`` then ``SAM2_BUILD_CUDA=0 pip install
--no-deps --no-build-isolation sam2==1.1.0``). Tests import it as ``import sam2_reference`` (``tests/``
is on ``sys.path`` under pytest) after ``pytest.importorskip("sam2")``.

Two builders:

- :func:`build_from_yaml`: exactly what ``sam2.build_sam.build_sam2(<yaml>)`` instantiates (hydra, the
  installed yaml, ``build_sam2``'s default overrides), optionally on the meta device (no memory);
- :func:`build_from_config`: the same classes with every field taken from a :class:`Sam2Config`
  (memory modules left out), so test configs that have no yaml can be built too.

Random init leaves LayerNorm weights/biases, ``pos_embed``, ``pos_embed_window``, layer-scale
``gamma`` etc. constant; :func:`randomize_` redraws every parameter and buffer so that swapped
norms and position embeddings do not go untested.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import torch
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import RoPEAttention, TwoWayTransformer
from sam2.modeling.sam2_base import SAM2Base

from sam_jax.models.sam.config import PromptEncoderConfig
from sam_jax.models.sam2.config import (
    YAML_FILES,
    FpnNeckConfig,
    HieraConfig,
    ImageEncoderConfig,
    MemoryAttentionConfig,
    MemoryEncoderConfig,
    RoPEAttentionConfig,
    Sam2Config,
    Sam2MaskDecoderConfig,
)

from reference_weights import random_tensor

# build_sam2(apply_postprocessing=True) adds these three overrides to every yaml.
POSTPROCESSING_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]


def build_from_yaml(name: str, device: str = "cpu") -> SAM2Base:
    """``build_sam2(YAML_FILES[name], ckpt_path=None)`` in eval mode; ``device="meta"`` allocates nothing."""
    import sam2  # noqa: F401  (initialises hydra's config search path)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name=YAML_FILES[name], overrides=POSTPROCESSING_OVERRIDES)
    OmegaConf.resolve(cfg)
    with torch.device(device), _linspace_on_cpu():
        model = instantiate(cfg.model, _recursive_=True)
    return model.eval()


@contextlib.contextmanager
def _linspace_on_cpu():
    """Hiera calls ``torch.linspace(...).item()`` for its drop-path rates, which the meta device cannot."""
    linspace = torch.linspace
    with mock.patch.object(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})):
        yield


def build_trunk(cfg: HieraConfig) -> Hiera:
    return Hiera(
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        q_pool=cfg.q_pool,
        q_stride=tuple(cfg.q_stride),
        stages=tuple(cfg.stages),
        dim_mul=cfg.dim_mul,
        head_mul=cfg.head_mul,
        window_pos_embed_bkg_spatial_size=tuple(cfg.window_pos_embed_bkg_spatial_size),
        window_spec=tuple(cfg.window_spec),
        global_att_blocks=tuple(cfg.global_att_blocks),
    ).eval()


def build_neck(cfg: FpnNeckConfig) -> FpnNeck:
    return FpnNeck(
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=cfg.pos_num_pos_feats,
            temperature=cfg.pos_temperature,
            normalize=cfg.pos_normalize,
            scale=cfg.pos_scale,
        ),
        d_model=cfg.d_model,
        backbone_channel_list=list(cfg.backbone_channel_list),
        kernel_size=cfg.kernel_size,
        stride=cfg.stride,
        padding=cfg.padding,
        fpn_interp_model=cfg.fpn_interp_model,
        fuse_type=cfg.fuse_type,
        fpn_top_down_levels=list(cfg.fpn_top_down_levels),
    ).eval()


def build_image_encoder(cfg: ImageEncoderConfig) -> ImageEncoder:
    return ImageEncoder(trunk=build_trunk(cfg.trunk), neck=build_neck(cfg.neck), scalp=cfg.scalp).eval()


def build_prompt_encoder(cfg: PromptEncoderConfig) -> PromptEncoder:
    g, s = cfg.image_embedding_size, cfg.input_image_size
    return PromptEncoder(
        embed_dim=cfg.embed_dim, image_embedding_size=(g, g), input_image_size=(s, s), mask_in_chans=cfg.mask_in_chans
    ).eval()


def build_mask_decoder(cfg: Sam2MaskDecoderConfig) -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=cfg.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=cfg.transformer_depth,
            embedding_dim=cfg.transformer_dim,
            mlp_dim=cfg.transformer_mlp_dim,
            num_heads=cfg.transformer_num_heads,
            attention_downsample_rate=cfg.attention_downsample_rate,
        ),
        transformer_dim=cfg.transformer_dim,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        use_high_res_features=cfg.use_high_res_features,
        iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid,
        dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh,
        pred_obj_scores=cfg.pred_obj_scores,
        pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=cfg.use_multimask_token_for_obj_ptr,
    ).eval()


def build_from_config(cfg: Sam2Config) -> SAM2Base:
    """``SAM2Base`` with every field from ``cfg`` and no memory modules (the image model, plus the
    few video parameters ``SAM2Base`` itself owns)."""
    dec = cfg.mask_decoder
    fixed = {
        "transformer_depth": 2,
        "transformer_mlp_dim": 2048,
        "transformer_num_heads": 8,
        "attention_downsample_rate": 2,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
    }
    differs = {k: (getattr(dec, k), v) for k, v in fixed.items() if getattr(dec, k) != v}
    pe = cfg.prompt_encoder
    if differs or pe.mask_in_chans != 16 or pe.embed_dim != cfg.image_encoder.neck.d_model:
        raise ValueError(f"SAM2Base builds its heads with fixed sizes; {cfg.name} differs: {differs}, {pe}")
    model = SAM2Base(
        image_encoder=build_image_encoder(cfg.image_encoder),
        memory_attention=None,
        memory_encoder=None,
        num_maskmem=cfg.num_maskmem,
        image_size=cfg.image_size,
        backbone_stride=cfg.backbone_stride,
        sigmoid_scale_for_mem_enc=cfg.sigmoid_scale_for_mem_enc,
        sigmoid_bias_for_mem_enc=cfg.sigmoid_bias_for_mem_enc,
        use_mask_input_as_output_without_sam=cfg.use_mask_input_as_output_without_sam,
        directly_add_no_mem_embed=cfg.directly_add_no_mem_embed,
        use_high_res_features_in_sam=cfg.use_high_res_features_in_sam,
        multimask_output_in_sam=cfg.multimask_output_in_sam,
        multimask_min_pt_num=cfg.multimask_min_pt_num,
        multimask_max_pt_num=cfg.multimask_max_pt_num,
        multimask_output_for_tracking=cfg.multimask_output_for_tracking,
        use_multimask_token_for_obj_ptr=dec.use_multimask_token_for_obj_ptr,
        iou_prediction_use_sigmoid=dec.iou_prediction_use_sigmoid,
        use_obj_ptrs_in_encoder=cfg.use_obj_ptrs_in_encoder,
        max_obj_ptrs_in_encoder=cfg.max_obj_ptrs_in_encoder,
        add_tpos_enc_to_obj_ptrs=cfg.add_tpos_enc_to_obj_ptrs,
        proj_tpos_enc_in_obj_ptrs=cfg.proj_tpos_enc_in_obj_ptrs,
        use_signed_tpos_enc_to_obj_ptrs=cfg.use_signed_tpos_enc_to_obj_ptrs,
        only_obj_ptrs_in_the_past_for_eval=cfg.only_obj_ptrs_in_the_past_for_eval,
        pred_obj_scores=dec.pred_obj_scores,
        pred_obj_scores_mlp=dec.pred_obj_scores_mlp,
        fixed_no_obj_ptr=cfg.fixed_no_obj_ptr,
        soft_no_obj_ptr=cfg.soft_no_obj_ptr,
        use_mlp_for_obj_ptr_proj=cfg.use_mlp_for_obj_ptr_proj,
        no_obj_embed_spatial=cfg.no_obj_embed_spatial,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": dec.dynamic_multimask_via_stability,
            "dynamic_multimask_stability_delta": dec.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": dec.dynamic_multimask_stability_thresh,
        },
    )
    return model.eval()


def build_rope_attention(cfg: RoPEAttentionConfig) -> RoPEAttention:
    return RoPEAttention(
        embedding_dim=cfg.embedding_dim,
        num_heads=cfg.num_heads,
        downsample_rate=cfg.downsample_rate,
        dropout=cfg.dropout,
        kv_in_dim=cfg.kv_in_dim,
        rope_theta=cfg.rope_theta,
        rope_k_repeat=cfg.rope_k_repeat,
        feat_sizes=tuple(cfg.feat_sizes),
    ).eval()


def build_memory_attention(cfg: MemoryAttentionConfig) -> MemoryAttention:
    layer = MemoryAttentionLayer(
        activation=cfg.activation,
        cross_attention=build_rope_attention(cfg.cross_attention),
        d_model=cfg.d_model,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        pos_enc_at_attn=cfg.pos_enc_at_attn,
        pos_enc_at_cross_attn_keys=cfg.pos_enc_at_cross_attn_keys,
        pos_enc_at_cross_attn_queries=cfg.pos_enc_at_cross_attn_queries,
        self_attention=build_rope_attention(cfg.self_attention),
    )
    return MemoryAttention(
        d_model=cfg.d_model,
        pos_enc_at_input=cfg.pos_enc_at_input,
        layer=layer,
        num_layers=cfg.num_layers,
        batch_first=cfg.batch_first,
    ).eval()


def build_memory_encoder(cfg: MemoryEncoderConfig) -> MemoryEncoder:
    ds, cx = cfg.mask_downsampler, cfg.fuser_layer
    return MemoryEncoder(
        out_dim=cfg.out_dim,
        mask_downsampler=MaskDownSampler(
            embed_dim=ds.embed_dim,
            kernel_size=ds.kernel_size,
            stride=ds.stride,
            padding=ds.padding,
            total_stride=ds.total_stride,
        ),
        fuser=Fuser(
            CXBlock(
                dim=cx.dim,
                kernel_size=cx.kernel_size,
                padding=cx.padding,
                drop_path=cx.drop_path,
                layer_scale_init_value=cx.layer_scale_init_value,
                use_dwconv=cx.use_dwconv,
            ),
            num_layers=cfg.fuser_num_layers,
            dim=cx.dim,
            input_projection=cfg.fuser_input_projection,
        ),
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=cfg.pos_num_pos_feats,
            temperature=cfg.pos_temperature,
            normalize=cfg.pos_normalize,
            scale=cfg.pos_scale,
        ),
        in_dim=cfg.in_dim,
    ).eval()


def build_video_from_config(cfg: Sam2Config) -> SAM2Base:
    """:func:`build_from_config` with the memory modules of ``cfg`` (and the memory-bank settings
    ``build_from_config`` leaves at ``SAM2Base``'s defaults), so ``mem_dim`` and every video tensor
    are those of the whole model."""
    memory = {
        "memory_attention": build_memory_attention(cfg.memory_attention),
        "memory_encoder": build_memory_encoder(cfg.memory_encoder),
        "max_cond_frames_in_attn": cfg.max_cond_frames_in_attn,
        "memory_temporal_stride_for_eval": cfg.memory_temporal_stride_for_eval,
        "binarize_mask_from_pts_for_mem_enc": cfg.binarize_mask_from_pts_for_mem_enc,
        "non_overlap_masks_for_mem_enc": cfg.non_overlap_masks_for_mem_enc,
    }
    # build_from_config passes memory_attention=None / memory_encoder=None: add them on the way in.
    base = SAM2Base
    with mock.patch(f"{__name__}.SAM2Base", lambda **kw: base(**{**kw, **memory})):
        return build_from_config(cfg)


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter and persistent buffer of ``module`` with :func:`random_tensor`."""
    state = module.state_dict()
    new = {k: torch.from_numpy(random_tensor(k, tuple(v.shape), seed)) for k, v in state.items()}
    module.load_state_dict(new, strict=True)
    return module.float().eval()


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """``module.state_dict()`` as float32 NumPy arrays."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in module.state_dict().items()}


def count_constant(module: torch.nn.Module) -> int:
    """How many parameters/buffers hold a single repeated value (0 after :func:`randomize_`)."""
    return sum(1 for v in module.state_dict().values() if v.numel() > 1 and bool((v == v.flatten()[0]).all()))
