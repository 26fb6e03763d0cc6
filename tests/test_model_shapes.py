"""Parameter trees of every registry size match the reference state_dict key for key, checked with
``jax.eval_shape`` (nothing is allocated), and the model's static structure behaves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sam_jax.convert import rules
from sam_jax.models.sam.config import CONFIGS, MODEL_TYPES, SamConfig, get_config
from sam_jax.models.sam.model import Sam

from reference_weights import load_shapes

# Counted on the reference (state_dict incl. the PE buffer) built on the meta device.
PARAM_COUNTS = {"vit_b": 93_735_728, "vit_l": 312_343_088, "vit_h": 641_090_864}


@pytest.mark.parametrize("name", [*MODEL_TYPES, "tiny"])
def test_param_tree_matches_reference_state_dict(name):
    assert rules.expected_shapes(get_config(name)) == load_shapes(name)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_param_count(name):
    abstract = nnx.eval_shape(lambda: Sam(get_config(name), rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(nnx.state(abstract)))
    assert count == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_abstract_forward_shapes(name):
    """The whole pipeline traced at full size without allocating weights."""
    from sam_jax import inference

    cfg = get_config(name)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Sam(cfg, rngs=nnx.Rngs(0))))
    s, g = cfg.img_size, cfg.image_encoder.grid_size
    out = jax.eval_shape(
        lambda p, x, hw: inference.encode_images(graphdef, p, x, hw),
        params,
        jax.ShapeDtypeStruct((2, s, s, 3), jnp.uint8),
        jax.ShapeDtypeStruct((2, 2), jnp.int32),
    )
    assert out.shape == (2, g, g, 256)
    prompts = inference.make_prompts(
        np.zeros((5, 3, 2), np.float32), np.ones((5, 3), np.int32), None, None, num_prompts=5, mask_size=4 * g
    )
    masks, iou = jax.eval_shape(
        lambda p, e, pr: inference.decode(graphdef, p, e, pr, True),
        params,
        jax.ShapeDtypeStruct((g, g, 256), jnp.float32),
        prompts,
    )
    assert masks.shape == (5, 3, 4 * g, 4 * g) and iou.shape == (5, 3)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trips_through_dict(name):
    cfg = get_config(name)
    assert SamConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="unknown model type 'vit_x'"):
        get_config("vit_x")
