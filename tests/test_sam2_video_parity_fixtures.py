"""SAM2VideoPredictor against stored outputs of the reference's (``sam2==1.1.0``), no torch.

``tests/fixtures/sam2_video_tiny.npz`` comes from ``tests/fixtures/make_sam2_video_fixtures.py``: the
``sam2_test`` config with every tensor from ``reference_weights.random_sam2_state_dict`` (seed 0; the
object-score bias shifted), ``video_scenario.py``'s scenario on the two clips of ``make_video_clips.py``
(moving shapes, one leaving the frame; a pan and zoom through a photo), 8 frames each: two objects on frame
0, forward propagation, a third object added after it, a correction click mid-clip, forward again, and
backwards. The weights are rebuilt here with NumPy from the stored keys and shapes and converted by
:mod:`sam_jax.convert.sam2_rules` / :mod:`sam_jax.convert.sam2_video_rules`.

Bars (issue 14): low-res logits <= 1e-4 max |diff| on the prompted frames (frame 0 of ``forward``, the
``correction``), <= 1e-3 on propagated ones; object scores <= 1e-4; video-resolution masks identical
except where sam_jax's own logit is within 1e-3 of 0 (thresholded from its low-res logits here).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sam_jax.convert import sam2_rules, sam2_video_rules
from sam_jax.models.sam2.config import get_config
from sam_jax.predictors.sam2_video import SAM2VideoPredictor

from conftest import fixture_arrays
from reference_weights import random_sam2_state_dict

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_video_clips import KINDS, write_clip
from video_scenario import NUM_FRAMES, PASSES, check_against, run_scenario

SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
FIXTURE = "sam2_video_tiny"


@functools.cache
def predictor() -> SAM2VideoPredictor:
    stored = fixture_arrays(FIXTURE)
    cfg = get_config("sam2_test")
    shapes = {k: tuple(v) for k, v in json.loads(str(stored["weights/shapes"])).items()}
    state_dict = random_sam2_state_dict(shapes, int(stored["weights/seed"]))
    state_dict[SCORE_BIAS] = state_dict[SCORE_BIAS] + stored["weights/score_shift"]
    image = sam2_rules.build_image_model(cfg, sam2_rules.to_params(state_dict, cfg))
    _, video = sam2_rules.split_state_dict(state_dict)
    parts = sam2_video_rules.build_video_parts(cfg, sam2_video_rules.to_params(video, cfg, source="reference"))
    return SAM2VideoPredictor(image, parts, fill_hole_area=8, binarize_mask_from_pts_for_mem_enc=True)


def _masks(stored: dict, key: str) -> np.ndarray:
    shape = tuple(stored[f"{key}_shape"])
    return np.unpackbits(stored[f"{key}_packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def video_logit(predictor: SAM2VideoPredictor, low_res: np.ndarray, hw: tuple[int, int], y: int, x: int) -> float:
    """sam_jax's video-resolution logit at ``(y, x)`` from one object's low-res logits."""
    state = {"video_height": hw[0], "video_width": hw[1]}
    return float(predictor._resize(state, low_res[None])[0, y, x])


@pytest.mark.parametrize("kind", KINDS)
def test_video_scenario_matches_the_stored_reference(kind, tmp_path):
    stored = fixture_arrays(FIXTURE)
    ours = predictor()
    folder, clip = write_clip(kind, tmp_path, "jpg", NUM_FRAMES)
    got = run_scenario(ours, str(folder), clip, ours.mask_size)
    want = {}
    for name in PASSES:
        key = f"{kind}/{name}"
        want.update({f"{name}/{f}": stored[f"{key}/{f}"] for f in ("frames", "low_res", "scores")})
        want[f"{name}/masks"] = _masks(stored, f"{key}/masks")
    worst = check_against(got, want, functools.partial(video_logit, ours))
    print(f"\n{kind}: (max low-res diff, max score diff, mask pixels within the margin) {worst}")
