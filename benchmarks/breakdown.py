"""Where the time goes, on both sides: the same sub-parts of the encoder and decoder timed apart.

    python benchmarks/breakdown.py [--model vit_b] [--threads N] [--repeats 5]

Each side runs in its own process (pinned like ``run.py``) on the fixture weights and fixed random
inputs: encoder parts on a ``(1, 64, 64, C)`` activation (patch embedding and neck on their own
inputs), decoder parts for :data:`harness.NUM_BOXES` box prompts. "attention core" rows are
attention minus its qkv and proj linears (q k^T, rel-pos bias, softmax, attn v and the layout work
around them). The reference side also lists torch.profiler's top operators over one encoder call.
Besides wall time, each part's CPU seconds (user + system, all threads) are given: on a shared
machine they are disturbed less. Writes ``benchmarks/PROFILE.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent


def ours_parts(model: str) -> dict[str, Callable[[], object]]:
    """Thunks running each sub-part of sam_jax once (blocking), keyed by the shared part names."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from sam_jax import build_sam, get_config, inference
    from sam_jax.convert import rules
    from sam_jax.models.layers import sequential
    from sam_jax.ops.policy import ExecutionPolicy

    cfg = get_config(model)
    ec = cfg.image_encoder
    sam = build_sam(cfg, params=rules.to_params(harness.fixture_state_dict(model), cfg))
    enc, pe, dec = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, ec.grid_size, ec.grid_size, ec.embed_dim), np.float32))
    image = jnp.asarray(rng.standard_normal((1, ec.img_size, ec.img_size, 3), np.float32))
    emb = jnp.asarray(rng.standard_normal((ec.grid_size, ec.grid_size, ec.out_chans), np.float32))
    win = next(i for i in range(ec.depth) if i not in ec.global_attn_indexes)
    glob = ec.global_attn_indexes[0]
    graphdef, params = inference.split(sam)
    # The policy the drivers use on this platform (blocked loops on CPU).
    policy = ExecutionPolicy.for_platform(jax.default_backend())
    full = jax.jit(lambda p, im: nnx.merge(graphdef, p).image_encoder(im, policy))
    call = nnx.jit(lambda m, *a: m(*a))
    with_policy = nnx.jit(lambda m, *a: m(*a, policy=policy))

    boxes = _boxes(rng, cfg.img_size)
    prompts = inference.make_prompts(
        None, None, boxes, None, num_prompts=len(boxes), mask_size=cfg.prompt_encoder.mask_input_size
    )
    sparse, valid, dense = call(pe, *prompts)
    dense_pe = nnx.jit(lambda m: m.get_dense_pe())(pe)
    tokens = jnp.concatenate([jnp.zeros((len(boxes), 1 + dec.cfg.num_mask_tokens, sparse.shape[-1])), sparse], 1)
    src = jax.jit(lambda e, d: e[None] + d)(emb, dense)
    low = jnp.asarray(rng.standard_normal((len(boxes), 1, 256, 256), np.float32))
    resize = inference.Resize.make(256, cfg.img_size, (400, 600))

    def run(fn, *args) -> Callable[[], object]:
        return lambda: jax.block_until_ready(fn(*args))

    return {
        "encoder: whole": run(full, params, image),
        "encoder: patch embedding + pos": run(nnx.jit(lambda m, y: m.embed_patches(y)), enc, image),
        "encoder: windowed block": run(with_policy, enc.blocks[win], x),
        "encoder: global block": run(with_policy, enc.blocks[glob], x),
        "encoder: windowed attention (incl. windowing)": run(
            nnx.jit(lambda b, y: _window_branch(b, y, policy)), enc.blocks[win], x
        ),
        "encoder: windowed qkv linear": run(call, enc.blocks[win].attn.qkv, _pad_windows(x, ec.window_size)),
        "encoder: windowed proj linear": run(call, enc.blocks[win].attn.proj, _pad_windows(x, ec.window_size)),
        "encoder: global attention": run(with_policy, enc.blocks[glob].attn, x),
        "encoder: global qkv linear": run(call, enc.blocks[glob].attn.qkv, x),
        "encoder: global proj linear": run(call, enc.blocks[glob].attn.proj, x),
        "encoder: MLP": run(call, enc.blocks[glob].mlp, x),
        "encoder: LayerNorm": run(call, enc.blocks[glob].norm1, x),
        "encoder: neck": run(nnx.jit(lambda e, y: sequential(e.neck, y)), enc, x),
        "decoder: prompt encoder (boxes)": run(call, pe, *prompts),
        "decoder: mask decoder": run(call, dec, emb, dense_pe, sparse, dense, valid),
        "decoder: two-way transformer": run(call, dec.transformer, src, dense_pe[None], tokens, None),
        "decoder: output upscaling": run(
            nnx.jit(lambda m, y: sequential(m.output_upscaling, y)), dec, src.reshape(dense.shape)
        ),
        "decoder: masks to image size": run(inference.postprocess, low, resize, np.float32(0.0), True),
    }


def _pad_windows(x, window: int):
    from sam_jax.models.sam.image_encoder import window_partition

    return window_partition(x, window)[0]


def _window_branch(block, x, policy):
    """The windowed block's attention branch as ``Block`` runs it (qkv, windowing, attention, proj)."""
    return block.attn(x, window=block.window_size, policy=policy)


def _boxes(rng, size: int):
    import numpy as np

    xy = rng.uniform(0, 0.6 * size, (harness.NUM_BOXES, 2))
    wh = rng.uniform(0.1 * size, 0.4 * size, (harness.NUM_BOXES, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def reference_parts(model: str) -> tuple[dict[str, Callable[[], object]], Callable[[], object]]:
    """The same sub-parts of the PyTorch reference, and a thunk for the whole encoder."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    from reference_model import build_reference

    sam = build_reference(model)
    enc, pe, dec = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
    rng = np.random.default_rng(0)
    g, c = enc.pos_embed.shape[1], enc.pos_embed.shape[3]
    x = torch.from_numpy(rng.standard_normal((1, g, g, c), np.float32))
    image = torch.from_numpy(
        rng.standard_normal((1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size), np.float32)
    )
    emb = torch.from_numpy(rng.standard_normal((1, 256, g, g), np.float32))
    bw = next(b for b in enc.blocks if b.window_size > 0)
    bg = next(b for b in enc.blocks if b.window_size == 0)
    xw, pad_hw = window_partition(x, bw.window_size)
    boxes = torch.from_numpy(_boxes(rng, sam.image_encoder.img_size))
    sparse, dense = pe(points=None, boxes=boxes, masks=None)
    dense_pe = pe.get_dense_pe()
    tokens = torch.cat([torch.zeros(len(boxes), 1 + dec.num_mask_tokens, sparse.shape[-1]), sparse], 1)
    src = torch.repeat_interleave(emb, len(boxes), dim=0) + dense
    pos_src = torch.repeat_interleave(dense_pe, len(boxes), dim=0)
    low = torch.from_numpy(rng.standard_normal((len(boxes), 1, 256, 256), np.float32))

    def to_image_size(masks):
        masks = F.interpolate(masks, (1024, 1024), mode="bilinear", align_corners=False)[..., :683, :1024]
        return F.interpolate(masks, (400, 600), mode="bilinear", align_corners=False)

    def window_branch():
        return window_unpartition(bw.attn(window_partition(x, bw.window_size)[0]), bw.window_size, pad_hw, (g, g))

    parts = {
        "encoder: whole": lambda: enc(image),
        "encoder: patch embedding + pos": lambda: enc.patch_embed(image) + enc.pos_embed,
        "encoder: windowed block": lambda: bw(x),
        "encoder: global block": lambda: bg(x),
        "encoder: windowed attention (incl. windowing)": window_branch,
        "encoder: windowed qkv linear": lambda: bw.attn.qkv(xw),
        "encoder: windowed proj linear": lambda: bw.attn.proj(xw),
        "encoder: global attention": lambda: bg.attn(x),
        "encoder: global qkv linear": lambda: bg.attn.qkv(x),
        "encoder: global proj linear": lambda: bg.attn.proj(x),
        "encoder: MLP": lambda: bg.mlp(x),
        "encoder: LayerNorm": lambda: bg.norm1(x),
        "encoder: neck": lambda: enc.neck(x.permute(0, 3, 1, 2)),
        "decoder: prompt encoder (boxes)": lambda: pe(points=None, boxes=boxes, masks=None),
        "decoder: mask decoder": lambda: dec(emb, dense_pe, sparse, dense, multimask_output=False),
        "decoder: two-way transformer": lambda: dec.transformer(src, pos_src, tokens),
        "decoder: output upscaling": lambda: dec.output_upscaling(src),
        "decoder: masks to image size": lambda: to_image_size(low),
    }
    return parts, lambda: enc(image)


def worker(args: argparse.Namespace) -> None:
    harness.pin_threads(args.threads)
    result: dict = {}
    if args.side == "ours":
        import jax

        parts = ours_parts(args.model)
        result["device"] = str(jax.devices()[0].device_kind)
    else:
        import torch

        torch.set_num_threads(args.threads)
        parts, whole = reference_parts(args.model)
        torch.set_grad_enabled(False)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            whole()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        result["top_ops"] = [
            {
                "op": e.key,
                "calls": e.count,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / total,
            }
            for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        ]
    result["parts"] = {name: harness.timed(fn, repeats=args.repeats) for name, fn in parts.items()}
    Path(args.out).write_text(json.dumps(result, indent=1))


def render(res: dict, args: argparse.Namespace) -> str:
    """PROFILE.md: side-by-side medians, derived "core" rows, and torch's top operators."""
    ref, ours = res["reference"]["parts"], res["ours"]["parts"]
    for side in (ref, ours):
        for kind, att in (("windowed", "windowed attention (incl. windowing)"), ("global", "global attention")):
            side[f"encoder: {kind} attention core"] = {
                key: side[f"encoder: {att}"][key]
                - side[f"encoder: {kind} qkv linear"][key]
                - side[f"encoder: {kind} proj linear"][key]
                for key in ("median", "cpu_median")
            }
    rows = [
        f"| {name} | {ref[name]['median'] * 1e3:.1f} | {ours[name]['median'] * 1e3:.1f}"
        f" | {ref[name]['median'] / ours[name]['median']:.2f}x"
        f" | {ref[name]['cpu_median']:.3f} | {ours[name]['cpu_median']:.3f} |"
        for name in ref
    ]
    lines = [
        f"# Profile ({args.model}, {args.threads} threads, median of {args.repeats})",
        "",
        f"Written by `python benchmarks/breakdown.py {' '.join(sys.argv[1:])}`;"
        f" sam_jax device: {res['ours']['device']}. Encoder parts on a (1, 64, 64, C) activation, decoder"
        f" parts for {harness.NUM_BOXES} box prompts."
        ' "attention core" = attention minus its qkv and proj linears (both linears on the zero-padded 70x70'
        " windows in windowed blocks). CPU = user + system seconds of all threads.",
        "",
        "| part | reference (ms) | sam_jax (ms) | speed-up | reference CPU (s) | sam_jax CPU (s) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Reference, torch.profiler top operators (self CPU time) over one whole encoder call:",
        "",
        "| op | calls | self (s) | share |",
        "|---|---|---|---|",
        *[f"| {t['op']} | {t['calls']} | {t['self_s']:.2f} | {t['share']:.0%} |" for t in res["reference"]["top_ops"]],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--threads", type=int, default=harness.usable_cores())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        worker(args)
        return
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("reference", "ours"):
            out = Path(tmp) / f"{side}.json"
            cmd = [sys.executable, __file__, "--side", side, "--out", str(out)]
            cmd += ["--model", args.model, "--threads", str(args.threads), "--repeats", str(args.repeats)]
            subprocess.run(cmd, check=True)
            res[side] = json.loads(out.read_text())
    report = render(res, args)
    print(report)
    (HERE / "PROFILE.md").write_text(report)


if __name__ == "__main__":
    main()
