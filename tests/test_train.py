"""Training: losses, prompt sampling, trainable parts, the optimiser, overfitting, exact resume."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from sam_jax import cli as sam_cli
from sam_jax import inference
from sam_jax.build import build_sam, load_sam
from sam_jax.data.pipeline import PipelineConfig, examples
from sam_jax.data.synthetic import ShapesConfig, shapes_example
from sam_jax.runtime import sharding
from sam_jax.train import cli as train_cli
from sam_jax.train import loop, presets
from sam_jax.train.loop import CHECKPOINT_DIR, METRICS_FILE, TrainConfig, embed_examples, train
from sam_jax.train.losses import dice_loss, mask_iou, mask_losses
from sam_jax.train.sampling import PromptConfig, add_correction_click, initial_prompt, mask_to_box
from sam_jax.train.step import (
    OptimizerConfig,
    StepConfig,
    compute_loss,
    init_state,
    make_optimizer,
    trainable_filter,
)

TINY_SHAPES = ShapesConfig(size=160)  # the tiny config's input size


def test_losses_and_iou_on_known_masks():
    target = jnp.zeros((8, 8)).at[2:6, 2:6].set(1.0)
    perfect = jnp.where(target > 0, 20.0, -20.0)
    assert float(dice_loss(perfect, target)) < 1e-6
    assert float(mask_losses(perfect, target)) < 1e-6
    half = jnp.where(target > 0, 0.0, -20.0)  # probability 1/2 on the object
    np.testing.assert_allclose(dice_loss(half, target), 1 - (8 + 1) / (0.5 * (8 + 16) + 1), rtol=1e-6)
    shifted = jnp.roll(perfect, 2, axis=1)  # overlaps 8 of 16 pixels: IoU 8 / 24
    np.testing.assert_allclose(mask_iou(shifted, target), 8 / 24, rtol=1e-6)
    assert float(mask_iou(jnp.full((8, 8), -1.0), jnp.zeros((8, 8)))) == 1.0
    # Focal + dice punishes the shifted mask more than the perfect one, and broadcasts over masks.
    both = mask_losses(jnp.stack([perfect, shifted]), target, "focal_dice")
    assert both.shape == (2,) and both[1] > both[0] + 0.3


def test_box_and_point_prompts_come_from_the_mask():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:30] = True
    size = jnp.array([160, 160])
    # Masks on a 40-grid over a 160 input: each mask pixel is 4x4 input pixels.
    np.testing.assert_allclose(mask_to_box(jnp.asarray(mask), 4.0), [20, 40, 119, 79])
    cfg = PromptConfig(box_prob=1.0, box_jitter_max=0.05)
    for seed in range(5):
        p = initial_prompt(jax.random.key(seed), jnp.asarray(mask), size, 160, 40, cfg)
        assert bool(p.box_valid) and not p.point_valid.any() and not bool(p.mask_valid)
        assert np.abs(np.asarray(p.boxes) - [20, 40, 119, 79]).max() <= 0.05 * 160 + 1e-4
    cfg = PromptConfig(box_prob=0.0, max_points=3, positive_prob=0.0)
    counts = set()
    for seed in range(12):
        p = initial_prompt(jax.random.key(seed), jnp.asarray(mask), size, 160, 40, cfg)
        assert not bool(p.box_valid) and p.coords.shape == (cfg.num_slots, 2)
        n = int(p.point_valid[: cfg.max_points].sum())
        counts.add(n)
        assert bool(p.point_valid[-1]) and int(p.labels[-1]) == -1  # the reference's padding point
        xy = np.asarray(p.coords[:n]) / 4  # back to the 40-grid
        inside = mask[xy[:, 1].astype(int), xy[:, 0].astype(int)]
        np.testing.assert_array_equal(inside, np.asarray(p.labels[:n]) == 1)
        assert inside[0] and not inside[1:].any()  # first positive, then negatives (positive_prob 0)
    assert counts == {1, 2, 3}


def test_correction_click_lands_in_the_error():
    mask = jnp.zeros((40, 40), bool).at[10:20, 10:20].set(True)
    cfg = PromptConfig(box_prob=1.0, correction_rounds=2)
    p = initial_prompt(jax.random.key(0), mask, jnp.array([160, 160]), 160, 40, cfg)
    low = jnp.ones((40, 40))
    missed = add_correction_click(
        jax.random.key(1), p, slot=3, mask=mask, pred_logits=-jnp.ones((40, 40)), low_res_logits=low, img_size=160
    )
    x, y = np.asarray(missed.coords[3]) / 4
    assert bool(missed.point_valid[3]) and int(missed.labels[3]) == 1 and bool(mask[int(y), int(x)])
    assert bool(missed.mask_valid) and float(missed.mask_input.sum()) == 1600
    spurious = add_correction_click(
        jax.random.key(1), p, slot=3, mask=mask, pred_logits=jnp.ones((40, 40)), low_res_logits=low, img_size=160
    )
    x, y = np.asarray(spurious.coords[3]) / 4
    assert int(spurious.labels[3]) == 0 and not bool(mask[int(y), int(x)])
    perfect = add_correction_click(
        jax.random.key(1),
        p,
        slot=3,
        mask=mask,
        pred_logits=jnp.where(mask, 1.0, -1.0),
        low_res_logits=low,
        img_size=160,
    )
    assert not bool(perfect.point_valid[3])


def test_sampled_point_prompts_decode_as_the_predictor_encodes_them(tiny_model):
    """Padding slots and the trailing "not a point" token give what make_prompts gives."""
    mask = jnp.zeros((40, 40), bool).at[12:30, 8:25].set(True)
    cfg = PromptConfig(box_prob=0.0, max_points=3, correction_rounds=1)
    p = initial_prompt(jax.random.key(4), mask, jnp.array([160, 160]), 160, 40, cfg)
    n = int(p.point_valid[: cfg.max_points].sum())
    graphdef, params = inference.split(tiny_model)
    emb = inference.encode_images(graphdef, params, jnp.zeros((1, 160, 160, 3), jnp.uint8), jnp.array([[160, 160]]))[0]
    ours = inference.decode(graphdef, params, emb, jax.tree_util.tree_map(lambda x: x[None], p), True)
    ref = inference.make_prompts(
        np.asarray(p.coords[None, :n]), np.asarray(p.labels[None, :n]), None, None, num_prompts=1, mask_size=40
    )
    theirs = inference.decode(graphdef, params, emb, ref, True)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-6)


def test_trainable_parts_select_the_right_parameters(tiny_model):
    def names(which):
        _, params, _ = nnx.split(tiny_model, trainable_filter(which), ...)
        return {
            jax.tree_util.keystr(k[:1]) for k, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
        }

    assert names("decoder") == {"['mask_decoder']"}
    assert names("decoder+prompt") == {"['mask_decoder']", "['prompt_encoder']"}
    assert names("all") == {"['image_encoder']", "['mask_decoder']", "['prompt_encoder']"}
    _, _, frozen = nnx.split(tiny_model, trainable_filter("all"), ...)
    gaussian = frozen["prompt_encoder"]["pe_layer"]["positional_encoding_gaussian_matrix"]
    assert gaussian.shape == (2, 16)  # a buffer: never trained
    with pytest.raises(ValueError, match="trainable must be one of"):
        trainable_filter("encoder")


def test_optimizer_accumulates_and_follows_its_schedule():
    cfg = OptimizerConfig(learning_rate=0.1, schedule="constant", weight_decay=0.0, grad_clip=None, accumulate=2)
    tx = make_optimizer(cfg, 20)
    assert make_optimizer(cfg, 20) is tx  # cached: a stable static argument of the jitted step
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    seen = []
    for g in (1.0, 3.0, -1.0, -1.0):
        updates, state = tx.update({"w": jnp.full(3, g)}, state, params)
        params = optax.apply_updates(params, updates)
        seen.append(float(params["w"][0]))
    # One Adam update every second batch, on the mean gradient of the two (2, then -1).
    ref, ref_params, ref_seen = optax.adam(0.1), {"w": jnp.ones(3)}, []
    ref_state = ref.init(ref_params)
    for g in (2.0, -1.0):
        updates, ref_state = ref.update({"w": jnp.full(3, g)}, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        ref_seen.append(float(ref_params["w"][0]))
    assert ref_seen[0] == pytest.approx(0.9) and ref_seen[1] != pytest.approx(ref_seen[0])
    np.testing.assert_allclose(seen, [1.0, ref_seen[0], ref_seen[0], ref_seen[1]], rtol=1e-6)
    warm = make_optimizer(OptimizerConfig(learning_rate=0.1, warmup_steps=4), 20)
    zero, _ = warm.update({"w": jnp.ones(3)}, warm.init(params), params)
    assert float(jnp.abs(zero["w"]).max()) == 0.0  # warm-up starts at learning rate 0


def test_cached_embeddings_and_bf16_compute_give_the_same_loss(tiny_model, tiny_set):
    """Decoder-only training on precomputed embeddings computes the loss it computes from images;
    bfloat16 compute stays close to it."""
    pcfg = PipelineConfig(img_size=160, batch_size=2, max_objects=2, mask_size=40, shuffle=False)
    ds = examples(tiny_set, pcfg)
    images = {k: np.stack([ds[i][k] for i in range(2)]) for k in ds[0]}
    cached = embed_examples(tiny_model, ds, 2, sharding.data_mesh())
    embedded = jax.tree.map(lambda *x: np.stack(x), *cached)
    assert "image" not in embedded and embedded["features"]["image_embed"].shape == (2, 10, 10, 32)
    graphdef, state = init_state(tiny_model, "decoder", make_optimizer(OptimizerConfig(), 10), 0)
    loss = jax.jit(compute_loss, static_argnums=(2, 3))
    key = jax.random.key(0)
    fp32, bf16 = StepConfig(), StepConfig(compute_dtype="bfloat16")
    from_images, _ = loss(state.params, state.frozen, graphdef, fp32, images, key)
    from_cache, _ = loss(state.params, state.frozen, graphdef, fp32, embedded, key)
    in_bf16, _ = loss(state.params, state.frozen, graphdef, bf16, images, key)
    np.testing.assert_allclose(from_cache, from_images, rtol=1e-5)
    np.testing.assert_allclose(in_bf16, from_images, rtol=0.05)


# --- the loop: overfitting, checkpoints, exact resume ------------------------------------------

N_STEPS = 30
RUN = TrainConfig(
    steps=N_STEPS,
    batch_size=2,
    max_objects=2,
    mask_size=40,
    optimizer=OptimizerConfig(learning_rate=3e-3, schedule="constant", warmup_steps=0),
    step=StepConfig(prompts=PromptConfig(box_prob=0.75, correction_rounds=1)),
    log_every=5,
    checkpoint_every=10,
    keep_checkpoints=2,
    num_threads=1,
)


@pytest.fixture(scope="module")
def tiny_set():
    return [shapes_example(0, i, TINY_SHAPES) for i in range(2)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_set):
    workdir = tmp_path_factory.mktemp("straight")
    model, history = train(build_sam("tiny", seed=0), tiny_set, RUN, workdir, progress=False)
    return workdir, model, history


def test_loss_falls_when_overfitting_a_tiny_set(straight_run):
    _, _, history = straight_run
    losses = [h["loss"] for h in history]
    assert [h["step"] for h in history] == list(range(5, N_STEPS + 1, 5))
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < 0.7 * losses[0], losses


def test_checkpoints_keep_the_newest(straight_run):
    workdir, _, _ = straight_run
    steps = sorted(int(p.name) for p in (workdir / CHECKPOINT_DIR).iterdir() if p.name.isdigit())
    assert steps == [20, 30]


def test_resumed_runs_drop_metrics_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in (5, 10, 15)) + '{"step": 2')
    loop._truncate_metrics(path, 10)  # the run was cut off after logging step 15, mid-way through a line
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]
    loop._truncate_metrics(path, 0)  # no checkpoint yet: a fresh start
    assert path.read_text() == ""


def test_resume_is_exact(straight_run, tiny_set, tmp_path):
    _, straight, _ = straight_run
    train(build_sam("tiny", seed=0), tiny_set, RUN, tmp_path, until=N_STEPS // 2, progress=False)
    # A fresh process would rebuild the model: another seed proves the weights come from the checkpoint.
    resumed, history = train(build_sam("tiny", seed=1), tiny_set, RUN, tmp_path, progress=False)
    assert [h["step"] for h in history] == [20, 25, 30]
    a, b = nnx.to_pure_dict(nnx.state(straight)), nnx.to_pure_dict(nnx.state(resumed))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# Decoder-only fine-tuning on cached embeddings, one update per two batches (MedSAM's setting).
CACHED_RUN = dataclasses.replace(
    RUN,
    steps=8,
    trainable="decoder",
    cache_embeddings=True,
    optimizer=dataclasses.replace(RUN.optimizer, accumulate=2),
    log_every=2,
    checkpoint_every=4,
)


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, tiny_set):
    model, history = train(
        build_sam("tiny", seed=0), tiny_set, CACHED_RUN, tmp_path_factory.mktemp("cached"), progress=False
    )
    return model, history


def test_resume_is_exact_on_cached_embeddings_with_accumulation(cached_run, tiny_set, tmp_path):
    """Stopped between the two batches of an update; the resumed run embeds the images with the
    restored (frozen) encoder, not with the model it is given."""
    straight, _ = cached_run
    train(build_sam("tiny", seed=0), tiny_set, CACHED_RUN, tmp_path, until=3, progress=False)
    resumed, history = train(build_sam("tiny", seed=1), tiny_set, CACHED_RUN, tmp_path, progress=False)
    assert [h["step"] for h in history] == [4, 6, 8]
    a, b = nnx.to_pure_dict(nnx.state(straight)), nnx.to_pure_dict(nnx.state(resumed))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    initial = nnx.to_pure_dict(nnx.state(build_sam("tiny", seed=0)))
    token, neck = ("mask_decoder", "iou_token", "embedding"), ("image_encoder", "neck", 0, "kernel")
    leaf = lambda tree, path: functools.reduce(lambda t, k: t[k], path, tree)
    assert not np.array_equal(leaf(a, token), leaf(initial, token))  # trained
    np.testing.assert_array_equal(leaf(a, neck), leaf(initial, neck))  # frozen


MULTI_DEVICE = """
import json
import jax
import numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from sam_jax.runtime import sharding
from sam_jax.build import build_sam
from sam_jax.data.pipeline import PipelineConfig, examples
from sam_jax.data.sources import SyntheticShapes
from sam_jax.data.synthetic import ShapesConfig
from sam_jax.train.sampling import PromptConfig
from sam_jax.train.step import OptimizerConfig, StepConfig, compute_loss, init_state, make_optimizer, step_key

assert jax.device_count() == 8, jax.devices()
tx = make_optimizer(OptimizerConfig(), 10)
graphdef, state = init_state(build_sam("tiny"), "all", tx, 0)
pcfg = PipelineConfig(img_size=160, batch_size=8, max_objects=2, mask_size=40, shuffle=False)
ds = examples(SyntheticShapes(ShapesConfig(size=160), seed=0), pcfg)
batch = {k: np.stack([ds[i][k] for i in range(8)]) for k in ds[0]}
cfg = StepConfig(prompts=PromptConfig(box_prob=0.5))
grad_fn = jax.jit(jax.grad(compute_loss, has_aux=True), static_argnums=(2, 3))
out = {}
for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
    mesh = sharding.data_mesh(tuple(devices))
    placed = sharding.replicate(state, mesh)
    batch_on_mesh = sharding.shard_batch(batch, mesh)
    assert len(batch_on_mesh["image"].sharding.device_set) == len(devices)
    grads, metrics = grad_fn(placed.params, placed.frozen, graphdef, cfg, batch_on_mesh, step_key(placed))
    out[name] = ([np.asarray(g) for g in jax.tree_util.tree_leaves(grads)], float(metrics["loss"]))
diffs = [float(np.abs(a - b).max()) for a, b in zip(out["one"][0], out["eight"][0], strict=True)]
scale = max(float(np.abs(a).max()) for a in out["one"][0])
print(json.dumps({"max_diff": max(diffs), "scale": scale, "losses": [out["one"][1], out["eight"][1]]}))
"""


def test_sharded_and_single_device_gradients_agree():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["scale"] > 1e-3  # gradients are not trivially zero
    assert out["max_diff"] <= 1e-5, out
    np.testing.assert_allclose(*out["losses"], rtol=1e-6)


def _write_folder(root, scenes):
    """``root/images/i.png`` and ``root/masks/i.png`` label images (object k is label k + 1)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, ex in enumerate(scenes):
        Image.fromarray(ex["image"]).save(root / "images" / f"{i}.png")
        labels = np.zeros(ex["masks"].shape[1:], np.uint8)
        for k, m in enumerate(ex["masks"]):
            labels[m] = k + 1
        Image.fromarray(labels).save(root / "masks" / f"{i}.png")


def test_train_command_resumes_and_exports_what_the_library_trains(tmp_path, tiny_set, cached_run):
    """``sam-jax train`` on a mask folder holding ``tiny_set``, stopped after 3 batches and run again:
    the exported model is exactly the uninterrupted library run's. Flags equal CACHED_RUN, so the
    compiled step is reused."""
    straight, straight_history = cached_run
    _write_folder(tmp_path / "data", tiny_set)
    flags = "--steps 8 --batch-size 2 --max-objects 2 --mask-size 40 --lr 3e-3 --schedule constant --warmup 0"
    flags += " --accumulate 2 --trainable decoder --cache-embeddings --box-prob 0.75 --correction-rounds 1"
    flags += " --threads 1 --log-every 2 --checkpoint-every 4 --keep 2"
    command = f"train {tmp_path / 'run'} --model-type tiny --folder {tmp_path / 'data'} {flags}"
    assert sam_cli.main([*command.split(), "--until", "3", "--export", str(tmp_path / "early")]) == 0
    assert load_sam(tmp_path / "early").config.name == "tiny"  # --until with --export: the model at step 3
    command += f" --export {tmp_path / 'model'}"
    assert sam_cli.main(command.split()) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4, 6, 8]
    # Windows that lie wholly after the resume average the same losses as the uninterrupted run's.
    np.testing.assert_allclose([r["loss"] for r in records[3:]], [h["loss"] for h in straight_history[2:]], rtol=1e-6)
    assert sorted(int(p.name) for p in (tmp_path / "run" / CHECKPOINT_DIR).iterdir() if p.name.isdigit()) == [4, 8]
    exported = load_sam(tmp_path / "model")
    assert exported.config.name == "tiny"
    a, b = nnx.to_pure_dict(nnx.state(straight)), nnx.to_pure_dict(nnx.state(exported))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert sam_cli.main(command.split()) == 2  # the export exists: refused before training, not after


def test_train_command_flags_override_the_recipe(tmp_path):
    parser = sam_cli.build_parser()
    args = parser.parse_args(["train", str(tmp_path), "--checkpoint", str(tmp_path), "--folder", str(tmp_path)])
    cfg = train_cli.train_config(args)
    assert cfg.trainable == "decoder" and cfg.shuffle and cfg.optimizer.grad_clip == 1.0  # fine-tuning defaults
    flags = "--preset demo --synthetic --grad-clip 0 --bf16 --loss focal_dice --accumulate 4 --correction-rounds 2"
    cfg = train_cli.train_config(parser.parse_args(["train", str(tmp_path), *flags.split()]))
    assert cfg.optimizer.grad_clip is None and cfg.optimizer.accumulate == 4 and not cfg.shuffle
    assert cfg.step.compute_dtype == "bfloat16" and cfg.step.mask_loss == "focal_dice"
    assert cfg.step.prompts.correction_rounds == 2 and cfg.steps == presets.DEMO_TRAIN.steps
    assert cfg.step.prompts.box_prob == presets.DEMO_TRAIN.step.prompts.box_prob  # the preset's, not the default
    with pytest.raises(ValueError, match="give the data"):
        args.run(parser.parse_args(["train", str(tmp_path / "other"), "--model-type", "tiny"]))


def test_building_the_command_line_imports_no_training_code():
    """``sam-jax --help`` builds every parser: that must import neither the training modules (the
    step, losses, loop) nor grain, nor JAX itself (``import sam_jax`` is lazy)."""
    code = (
        "import sys, sam_jax; before = set(sys.modules); import sam_jax.cli; sam_jax.cli.build_parser();"
        " print(' '.join(sorted(set(sys.modules) - before)))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    new = res.stdout.split()
    assert "sam_jax.train.cli" in new
    light = ("sam_jax.train", "sam_jax.train.cli", "sam_jax.train.choices")
    training = [m for m in new if m.startswith("sam_jax.train") and m not in light]
    assert not training and not {"grain", "scipy", "jax", "flax", "optax"} & {m.split(".")[0] for m in new}, new
