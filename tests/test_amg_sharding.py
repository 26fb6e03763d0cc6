"""Mask generation sharded over 8 (simulated CPU) devices gives exactly the records of one device.

XLA flags must be set before JAX starts, so the comparison runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    import skimage.data
    from flax import nnx
    from conftest import fixture_model
    from sam_jax.amg import SamAutomaticMaskGenerator
    from sam_jax.build import build_sam

    assert len(jax.devices()) == 8, jax.devices()
    base = fixture_model("tiny")
    model = build_sam(dataclasses.replace(base.config, mask_threshold=0.4), params=nnx.to_pure_dict(nnx.state(base)))
    kwargs = dict(points_per_side=16, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.01,
                  stability_score_offset=0.05, output_mode="coco_rle")
    images = [skimage.data.chelsea(), skimage.data.chelsea()[:, ::-1].copy()]
    one = SamAutomaticMaskGenerator(model, devices=jax.devices()[:1], **kwargs)
    eight = SamAutomaticMaskGenerator(model, **kwargs)
    single = [one.generate(im) for im in images]
    sharded = eight.generate(images[0])
    batched = eight.generate_batch(images)
    json.dump({"single": single, "sharded": sharded, "batched": batched,
               "mesh": eight.mesh.size, "params_devices": len(jax.tree.leaves(eight._params)[0].devices())}, sys.stdout)
    """
)


def test_eight_devices_match_one():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["mesh"] == 8 and out["params_devices"] == 8
    assert len(out["single"][0]) > 3
    assert out["sharded"] == out["single"][0]
    assert out["batched"] == out["single"]
