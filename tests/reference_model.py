"""Build the unmodified PyTorch reference (``segment_anything``) with the fixtures' random weights.

Needs torch and segment-anything (the ``reference`` extra). Live tests import it as
``from reference_model import build_reference`` (``tests/`` is on ``sys.path`` under pytest) and should
guard with ``pytest.importorskip("segment_anything")``.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sam_jax.models.sam.config import MODEL_TYPES, get_config

from reference_weights import random_state_dict


def build_from_config(name: str) -> Sam:
    """Mirror ``segment_anything.build_sam._build_sam`` with every field taken from ``get_config(name)``.

    The model keeps torch's own initialisation; it is built on the current default device, so it can be
    called under ``with torch.device("meta"):``.
    """
    cfg = get_config(name)
    enc, pe, dec = cfg.image_encoder, cfg.prompt_encoder, cfg.mask_decoder
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=enc.depth,
            embed_dim=enc.embed_dim,
            img_size=enc.img_size,
            mlp_ratio=enc.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=enc.layer_norm_eps),
            num_heads=enc.num_heads,
            patch_size=enc.patch_size,
            in_chans=enc.in_chans,
            qkv_bias=enc.qkv_bias,
            use_abs_pos=enc.use_abs_pos,
            use_rel_pos=enc.use_rel_pos,
            global_attn_indexes=list(enc.global_attn_indexes),
            window_size=enc.window_size,
            out_chans=enc.out_chans,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=pe.embed_dim,
            image_embedding_size=(pe.image_embedding_size, pe.image_embedding_size),
            input_image_size=(pe.input_image_size, pe.input_image_size),
            mask_in_chans=pe.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dec.transformer_dim,
                mlp_dim=dec.transformer_mlp_dim,
                num_heads=dec.transformer_num_heads,
                attention_downsample_rate=dec.attention_downsample_rate,
            ),
            transformer_dim=dec.transformer_dim,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    )
    return sam.eval()


def build_unweighted(name: str) -> Sam:
    """The reference architecture: ``sam_model_registry`` for vit_b/l/h, else the config mirror."""
    return sam_model_registry[name]() if name in MODEL_TYPES else build_from_config(name)


def state_dict_shapes(sam: Sam) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a model's state_dict, in the reference's key order."""
    return {key: tuple(t.shape) for key, t in sam.state_dict().items()}


def build_reference(name: str, seed: int = 0) -> Sam:
    """The reference model for ``name`` in eval mode, fp32 on CPU, holding ``random_state_dict(..., seed)``.

    With ``seed=0`` this is exactly the model the committed fixtures were made with.
    """
    sam = build_unweighted(name)
    weights = random_state_dict(state_dict_shapes(sam), seed)
    sam.load_state_dict({key: torch.from_numpy(w) for key, w in weights.items()}, strict=True)
    return sam.float().eval()
