"""The train step: a pure, jitted function of ``(state, batch)``, data-parallel over a mesh.

The model is split once into ``graphdef``, the *trainable* parameters (mask decoder only, decoder
plus prompt encoder, or everything) and the frozen rest. Only the trainable part has gradients and
optimiser state. Placing the batch split over the ``"data"`` axis of a mesh and the state
replicated (``NamedSharding``, :mod:`sam_jax.runtime.sharding`) makes plain ``jax.jit`` data-parallel; the
loss is a mean over the *global* batch, so a sharded step computes what a single-device step does.

A batch is a dict of arrays with a leading batch axis ``B``:

- ``image`` ``(B, S, S, 3)`` uint8, resized images padded bottom/right to ``S`` (or ``features``,
  the image features pytree precomputed by the frozen image encoder, which skips it),
- ``input_size`` ``(B, 2)`` int32, the valid ``(h, w)`` of each padded image,
- ``masks`` ``(B, K, R, R)`` bool, up to ``K`` objects per image on an ``R x R`` grid over the
  padded input, and ``mask_valid`` ``(B, K)`` bool marking the real ones.

Every object becomes one prompt (see :mod:`sam_jax.train.sampling`). The loss of a prompt is the
mask loss of the single-mask output plus the smallest mask loss among the three multimask outputs
(so both of the predictor's modes are trained), plus the IoU head's squared error on all four.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from sam_jax.core.decode import attend
from sam_jax.core.image import Features, embed
from sam_jax.core.prompts import Prompts
from sam_jax.models.layers import linear_resize_matrix
from sam_jax.models.sam.model import Sam
from sam_jax.ops.policy import XLA, ExecutionPolicy
from sam_jax.runtime.precision import cast_model
from sam_jax.train.choices import SCHEDULES, TRAINABLE, ComputeDtype, MaskLoss, Schedule, Trainable
from sam_jax.train.losses import iou_head_loss, mask_iou, mask_losses
from sam_jax.train.sampling import PromptConfig, add_correction_click, initial_prompt

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def trainable_filter(which: Trainable) -> nnx.filterlib.Filter:
    """The NNX filter selecting the parameters trained in mode ``which`` (buffers never are)."""
    parts = {"decoder": ("mask_decoder",), "decoder+prompt": ("mask_decoder", "prompt_encoder")}
    if which == "all":
        return nnx.Param
    if which not in parts:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {which!r}")
    return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(p) for p in parts[which])))


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What one step computes (static under jit)."""

    prompts: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    mask_loss: MaskLoss = "dice_bce"
    iou_loss_weight: float = 1.0
    compute_dtype: ComputeDtype = "float32"  # parameters stay fp32 either way
    policy: ExecutionPolicy = XLA  # how the image encoder runs (the loop sets its mesh's policy)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up, then constant or cosine decay, gradient clipping and
    accumulation (``optax.MultiSteps``: one update every ``accumulate`` batches, on the mean
    gradient)."""

    learning_rate: float = 1e-4
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    final_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float | None = 1.0
    accumulate: int = 1


@functools.cache
def make_optimizer(cfg: OptimizerConfig, total_batches: int, /) -> optax.GradientTransformation:
    """The optax transformation for ``total_batches`` batches (``total_batches // accumulate``
    updates; the schedule counts updates). Weight decay applies to matrices and kernels only.

    Cached: equal arguments give the same object, a static argument of :func:`train_step`."""
    updates = max(total_batches // cfg.accumulate, 1)
    if cfg.schedule == "cosine":
        decay_steps = max(updates, cfg.warmup_steps + 1)
        final = cfg.learning_rate * cfg.final_lr_ratio
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, decay_steps, final)
    elif cfg.schedule == "constant":
        warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        lr = optax.join_schedules([warmup, optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    decay_mask = lambda params: jax.tree_util.tree_map(lambda x: x.ndim > 1, params)
    tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    if cfg.accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate)
    return tx


class TrainState(NamedTuple):
    """Everything a resumed run needs besides the data position (a pytree)."""

    step: Int[Array, ""]  # batches consumed so far
    params: nnx.State  # trainable parameters
    frozen: nnx.State  # the rest of the model (frozen parameters and buffers)
    opt_state: optax.OptState
    key: PRNGKeyArray  # base key; step ``i`` uses ``fold_in(key, i)``


def init_state(
    model: Sam, trainable: Trainable, tx: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its graph and a fresh :class:`TrainState` (step 0)."""
    graphdef, params, frozen = nnx.split(model, trainable_filter(trainable), ...)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(f"trainable={trainable!r} selects no parameters of {model.config.name}")
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        key=jax.random.key_data(jax.random.key(seed)),
    )
    return graphdef, state


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> Sam:
    """The model with the state's current parameters (for export and evaluation)."""
    return nnx.merge(graphdef, state.params, state.frozen)


def _decode_all(model: Sam, features: Features, prompts: Prompts) -> tuple[jax.Array, jax.Array]:
    """All four mask tokens ``(P, 4, m, m)`` and IoU predictions ``(P, 4)`` for one image."""
    tokens, image = attend(model, features, prompts, model.prompt_encoder.get_dense_pe())
    return model.mask_decoder.predict_masks(tokens, image), model.mask_decoder.predict_iou(tokens)


def _image_loss(
    model: Sam,
    cfg: StepConfig,
    key: PRNGKeyArray,
    features: Features,
    input_size: Int[Array, " 2"],
    masks: Bool[Array, "K R R"],
) -> tuple[Float[Array, " K"], Float[Array, " K"], Float[Array, " K"]]:
    """Per-object loss, IoU-head loss and IoU of the single-mask output, for one image,
    averaged over the correction rounds."""
    pcfg, img_size = cfg.prompts, model.config.img_size
    mask_size = model.config.prompt_encoder.mask_input_size
    k = masks.shape[0]
    keys = jax.random.split(key, (cfg.prompts.correction_rounds + 1, k))
    prompts = jax.vmap(lambda kk, m: initial_prompt(kk, m, input_size, img_size, mask_size, pcfg))(keys[0], masks)
    targets = masks.astype(jnp.float32)
    resize = jnp.asarray(linear_resize_matrix(mask_size, masks.shape[-1]), jnp.float32)
    totals = []
    for r in range(pcfg.correction_rounds + 1):
        low_res, iou_pred = _decode_all(model, features, prompts)
        low_res, iou_pred = low_res.astype(jnp.float32), iou_pred.astype(jnp.float32)
        logits = jnp.einsum("rm,pkmn,sn->pkrs", resize, low_res, resize)  # (K, 4, R, R)
        per_mask = mask_losses(logits, targets[:, None], cfg.mask_loss)
        mask_loss = per_mask[:, 0] + jnp.min(per_mask[:, 1:], axis=1)
        actual = mask_iou(logits, targets[:, None])
        iou_loss = jnp.mean(iou_head_loss(iou_pred, actual), axis=1)
        totals.append((mask_loss, iou_loss, actual[:, 0]))
        if r < pcfg.correction_rounds:
            click = functools.partial(add_correction_click, slot=pcfg.max_points + r, img_size=img_size)
            prompts = jax.vmap(click)(
                keys[r + 1], prompts, mask=masks, pred_logits=logits[:, 0], low_res_logits=low_res[:, 0]
            )
    return tuple(jnp.mean(jnp.stack(t), axis=0) for t in zip(*totals, strict=True))


def compute_loss(
    params: nnx.State, frozen: nnx.State, graphdef: nnx.GraphDef, cfg: StepConfig, batch: Batch, key: PRNGKeyArray
) -> tuple[Float[Array, ""], Metrics]:
    """Mean loss over every valid object of the (global) batch, and metrics."""
    model = nnx.merge(graphdef, params, frozen)
    if cfg.compute_dtype == "bfloat16":
        model = cast_model(model, jnp.bfloat16)
    if "features" in batch:
        features = batch["features"]
    else:
        features = embed(model, batch["image"], batch["input_size"], cfg.policy)
    b = batch["input_size"].shape[0]
    mask_loss, iou_loss, iou = jax.vmap(lambda kk, f, s, m: _image_loss(model, cfg, kk, f, s, m))(
        jax.random.split(key, b), features, batch["input_size"], batch["masks"]
    )
    valid = batch["mask_valid"].astype(jnp.float32)
    count = jnp.maximum(valid.sum(), 1.0)
    mean = lambda x: jnp.sum(x * valid) / count
    loss = mean(mask_loss) + cfg.iou_loss_weight * mean(iou_loss)
    return loss, {"loss": loss, "mask_loss": mean(mask_loss), "iou_loss": mean(iou_loss), "miou": mean(iou)}


def step_key(state: TrainState) -> PRNGKeyArray:
    """The key of the state's current step (independent of devices and of resumption)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=3)
def train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: StepConfig, state: TrainState, batch: Batch
) -> tuple[TrainState, Metrics]:
    """One batch: loss and gradients of the trainable parameters, one optimiser update.

    Data-parallel when ``state`` is replicated over a mesh and ``batch`` split along its leading
    axis (:func:`sam_jax.runtime.sharding.replicate`, :func:`sam_jax.runtime.sharding.shard_batch`); ``state`` is
    donated. ``tx`` must be the same object for the same optimiser (:func:`make_optimizer` caches
    it) so that the compiled step is reused.
    """
    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, state.frozen, graphdef, cfg, batch, step_key(state))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
