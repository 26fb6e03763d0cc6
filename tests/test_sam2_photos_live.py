"""A prompt matrix on real photos, full-size SAM 2.1 models, against the installed reference
(``sam2==1.1.0``'s ``SAM2ImagePredictor``), same random weights (every tensor redrawn by
:func:`sam2_reference.randomize_` on the model ``build_sam2`` makes from the released yaml).

hiera_tiny on three ``skimage.data`` photos (astronaut 512 x 512, chelsea 300 x 451 and the
grayscale camera 512 x 512), hiera_base_plus on chelsea. Per photo: the features the predictor
keeps (``image_embed`` and the two projected high-resolution FPN levels), then points, boxes,
box + points, ``mask_input`` refinement (the best low-res logits of a previous call), several
objects at once, multimask on and off, ``return_logits``.

Grayscale: the reference takes HWC RGB only; a 2-D array (or a PIL "L" image) fails in its
``SAM2Transforms`` (``Normalize`` of one channel by three means). Its user replicates the gray
channel, ``np.repeat(gray[..., None], 3, axis=2)``, which is what ``PIL.Image.convert("RGB")``
does too. sam_jax's predictor takes the 2-D array as it is and does the same conversion.

fp32, highest matmul precision. Bars: features and low-res logits 1e-4, IoU predictions and
object-score logits 1e-5, masks identical except where the reference's logit is within 1e-3 of
the threshold.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import skimage.data

pytest.importorskip("sam2")
import torch
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor as RefPredictor
from test_sam2_parity_fixtures import decode_with_object_scores

from sam_jax.convert import sam2_rules
from sam_jax.models.sam2.config import get_config
from sam_jax.predictors.sam2 import SAM2ImagePredictor

import sam2_reference as ref_lib
from conftest import max_abs

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)

TOL = 1e-4
SCORE_TOL = 1e-5
MASK_MARGIN = 1e-3
PHOTOS = {"astronaut": skimage.data.astronaut, "chelsea": skimage.data.chelsea, "camera": skimage.data.camera}
MODEL_SEEDS = {"sam2.1_hiera_tiny": 21, "sam2.1_hiera_base_plus": 22}
RUNS = [
    ("sam2.1_hiera_tiny", "astronaut"),
    ("sam2.1_hiera_tiny", "chelsea"),
    ("sam2.1_hiera_tiny", "camera"),
    ("sam2.1_hiera_base_plus", "chelsea"),
]


def reference_input(image: np.ndarray) -> np.ndarray:
    """What a user of the reference passes for ``image``: HWC RGB, a gray image's channel replicated."""
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


_models: dict[str, tuple] = {}


def models(name: str) -> tuple[torch.nn.Module, object]:
    """``(reference SAM2Base, our image model)`` of a released config with the same random weights
    (built once per session; the reference from its yaml, memory modules included)."""
    if name not in _models:
        _models.clear()  # one full-size pair in memory at a time (RUNS are ordered by model)
        ref = ref_lib.randomize_(ref_lib.build_from_yaml(name), MODEL_SEEDS[name])
        cfg = get_config(name)
        ours = sam2_rules.build_image_model(cfg, sam2_rules.to_params(ref_lib.state_dict_numpy(ref), cfg))
        _models[name] = ref, ours
    return _models[name]


class ObjectScores:
    """The reference decoder's last object-score logits (its predictor drops them): a forward hook."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.last = None
        self._handle = model.sam_mask_decoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.last = output[3].numpy()

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module", params=RUNS, ids=[f"{m.rsplit('hiera_')[-1]}-{p}" for m, p in RUNS])
def run(request):
    """Both predictors with the photo set; the photo goes to ours as a user has it (2-D if gray)."""
    name, photo = request.param
    ref, ours = models(name)
    image = PHOTOS[photo]()
    rp, op = RefPredictor(ref), SAM2ImagePredictor(ours)
    with torch.no_grad():
        rp.set_image(reference_input(image))
    op.set_image(image)
    hook = ObjectScores(ref)
    yield name, photo, image, rp, op, hook
    hook.remove()


def test_reference_needs_rgb_for_a_gray_photo():
    """Why :func:`reference_input` exists: the reference refuses a 2-D array and a PIL "L" image,
    and replicating the channel is PIL's own gray -> RGB conversion."""
    gray = skimage.data.camera()
    assert gray.ndim == 2
    ref, _ = models(RUNS[0][0])
    rp = RefPredictor(ref)
    for image in (gray, Image.fromarray(gray)):
        with pytest.raises(RuntimeError), torch.no_grad():
            rp.set_image(image)
    assert np.array_equal(reference_input(gray), np.asarray(Image.fromarray(gray).convert("RGB")))


def test_features(run):
    name, photo, _, rp, op, _ = run
    errors = {"image_embed": max_abs(op.get_image_embedding(), rp.get_image_embedding().numpy())}
    for level in range(2):
        got = np.asarray(op.features[f"high_res_feats_{level}"][:1]).transpose(0, 3, 1, 2)
        errors[f"high_res_feats_{level}"] = max_abs(got, rp._features["high_res_feats"][level].numpy())
    print(name, photo, "features", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOL, errors


def cases(h: int, w: int) -> dict[str, dict]:
    """The prompt matrix at fractions of the photo's size. ``refine, single`` and ``mask_input only``
    get ``mask_input`` from the test: the reference's best-IoU low-res logits of the ``points`` call."""
    xy = lambda *f: np.array([[fx * w, fy * h] for fx, fy in zip(f[::2], f[1::2], strict=True)], np.float32)
    points, labels = xy(0.5, 0.45, 0.62, 0.3, 0.1, 0.9), np.array([1, 1, 0], np.int32)
    box = np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h], np.float32)
    box2 = np.array([0.05 * w, 0.1 * h, 0.5 * w, 0.6 * h], np.float32)
    return {
        "point": dict(point_coords=points[:1], point_labels=labels[:1]),
        "points": dict(point_coords=points, point_labels=labels),
        "points, single": dict(point_coords=points, point_labels=labels, multimask_output=False),
        "box, single": dict(box=box, multimask_output=False),
        "box+points": dict(box=box, point_coords=points[[0, 2]], point_labels=labels[[0, 2]]),
        "refine, single": dict(point_coords=points, point_labels=labels, multimask_output=False),
        "mask_input only": dict(),
        "return_logits": dict(point_coords=xy(0.3, 0.6), point_labels=labels[:1], return_logits=True),
        "return_logits, single": dict(box=box, multimask_output=False, return_logits=True),
        "two objects": dict(point_coords=points[:2, None], point_labels=labels[:2, None], box=np.stack([box, box2])),
    }


def test_prompt_matrix(run):
    name, photo, image, rp, op, hook = run
    errors = {}
    mask_input = None
    for case, kw in cases(*image.shape[:2]).items():
        if case in ("refine, single", "mask_input only"):
            kw = {**kw, "mask_input": mask_input}
        multimask, return_logits = kw.pop("multimask_output", True), kw.pop("return_logits", False)
        with torch.no_grad():
            # The reference's masks are these logits > mask_threshold (0.0): one call gives both.
            logits_r, iou_r, low_r = rp.predict(**kw, multimask_output=multimask, return_logits=True)
        score_r = hook.last
        masks, iou, low = op.predict(**kw, multimask_output=multimask, return_logits=return_logits)
        _, _, score = decode_with_object_scores(op, multimask, **kw)
        err = {
            "low_res": max_abs(low, low_r),
            "iou": max_abs(iou, iou_r),
            "object_score": max_abs(score, score_r),
        }
        if return_logits:
            err["logits"] = max_abs(masks, logits_r)
        else:
            sure = np.abs(logits_r) >= MASK_MARGIN
            assert masks.shape == logits_r.shape, case
            err["mask_mismatch"] = int(np.sum((masks > 0.5)[sure] != (logits_r > 0.0)[sure]))
            err["near_threshold"] = int(np.sum(~sure))
        errors[case] = err
        if case == "points":
            mask_input = low_r[np.argmax(iou_r)][None]
        assert err["low_res"] <= TOL and err.get("logits", 0.0) <= TOL, (case, err)
        assert err["iou"] <= SCORE_TOL and err["object_score"] <= SCORE_TOL, (case, err)
        assert err.get("mask_mismatch", 0) == 0, (case, err)
    fmt = lambda v: f"{v:.1e}" if isinstance(v, float) else str(v)
    print(name, photo, {case: {k: fmt(v) for k, v in e.items()} for case, e in errors.items()})
