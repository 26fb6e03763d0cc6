"""sam_jax: Segment Anything in JAX/Flax NNX."""

from sam_jax.amg.generator import SamAutomaticMaskGenerator
from sam_jax.build import build_sam, load_sam, sam_model_registry, save_sam
from sam_jax.config import SamConfig, get_config
from sam_jax.modeling.sam import Sam
from sam_jax.predictor import SamPredictor

__all__ = [
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "get_config",
    "load_sam",
    "sam_model_registry",
    "save_sam",
]
