"""sam_jax against the PyTorch reference, in one run on one machine: prints a table and writes
``benchmarks/RESULTS.md`` (and the raw figures as ``RESULTS.json``).

    python benchmarks/run.py [--models vit_b,vit_h,sam2.1_hiera_tiny] [--quick] [--bf16] [--threads N] [--workdir DIR]

Both sides hold the same random weights (the parity fixtures' ``random_state_dict(seed=0)``), see
the same real photo (``skimage.data``) and the same prompts, and run on the same cores with the
same number of threads. Each side runs in its own subprocess, so its peak RSS is its own; the
workers are ``reference.py``, ``ours.py`` and ``startup.py`` next to this file. Timings are
medians of ``--repeats`` runs after one untimed warm-up call on both sides. Nothing here assumes a
CPU: JAX uses its default backend and the reference uses CUDA when torch sees a GPU.

SAM 2 / 2.1 model types in ``--models`` are run by ``sam2_speed.py`` (set_image, 1-point predict and
AMG at 32 points per side with a realistic mask set, against Meta's sam2 in one process) and their
tables appended. The AMG and start-up sections run for the first model only (the decoder, hence most of AMG, is the
same for every model size); further models add the encoder, decoder, memory and FLOP/s rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness

HERE = Path(__file__).resolve().parent
MB = 2**20

# (label, worker timing key, unit scale, unit, bar on the reference/sam_jax speed-up)
TIME_ROWS = [
    ("image encoder (set_image)", "encoder", 1.0, "s", 2.5),
    ("decoder call, 1 point (predict, masks at image size)", "decoder_call", 1e3, "ms", 5.0),
    (f"decoder, batch of {harness.NUM_BOXES} boxes, per prompt", "decoder_batch", 1e3 / harness.NUM_BOXES, "ms", None),
    ("automatic mask generation end to end, reference's default thresholds", "amg_default", 1.0, "s", 6.0),
    ("automatic mask generation end to end, thresholds passing every mask", "amg_pass_all", 1.0, "s", 6.0),
    ("automatic mask generation end to end, a realistic mask set", "amg_many", 1.0, "s", 6.0),
]


# Workers whose JSON an earlier invocation left in --workdir (named in RESULTS.md).
REUSED: list[str] = []


def run_worker(script: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one worker to completion (its output streamed), and return the JSON it wrote; a worker
    whose JSON is already in the work directory (an interrupted run) is not run again."""
    out = Path(args[args.index("--out") + 1])
    if out.is_file():
        print(f"# {out.name}: kept from an earlier run in this work directory", flush=True)
        REUSED.append(out.name)
        return json.loads(out.read_text())
    cmd = [sys.executable, str(HERE / script), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def compare(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Max |difference| between two workers' outputs on the same inputs, and their mask IoU."""
    import numpy as np

    def max_abs(key: str) -> float:
        return float(np.max(np.abs(ours[key].astype(np.float64) - ref[key].astype(np.float64))))

    def min_iou(key: str) -> float:
        a, b = ours[key].astype(bool), ref[key].astype(bool)
        axes = (-2, -1)
        inter, union = (a & b).sum(axes), (a | b).sum(axes)
        return float(np.min(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))

    out: dict[str, Any] = {
        "embedding, max abs diff": max_abs("embedding"),
        "1-point low-res logits, max abs diff": max_abs("point_low"),
        "1-point IoU predictions, max abs diff": max_abs("point_iou"),
        f"{harness.NUM_BOXES}-box IoU predictions, max abs diff": max_abs("box_iou"),
        "1-point masks, min IoU": min_iou("point_masks"),
        f"{harness.NUM_BOXES}-box masks, min IoU": min_iou("box_masks"),
    }
    for setting in harness.AMG_SETTINGS:
        key = setting + "_areas"
        if key in ours and key in ref:
            a, b = ours[key], ref[key]
            largest = int(np.abs(a - b).max(initial=0)) if len(a) == len(b) else None
            diff = "counts differ" if largest is None else f"largest area difference {largest} px"
            out[f"{setting}: masks (first / second), sorted areas"] = f"{len(a)} / {len(b)}, {diff}"
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _bar(value: float | None, bar: float | None, op: str) -> str:
    if bar is None or value is None:
        return ""
    ok = value >= bar if op == ">=" else value <= bar
    return f"{op} {bar:g}: {'met' if ok else 'MISSED'}"


def _peak_running(side: dict) -> int:
    """Peak RSS over the encoder, decoder and AMG phases (not building the model)."""
    return max(v for k, v in side["memory"].items() if k.startswith("peak_") and k != "peak_load")


def model_rows(ours: dict, ref: dict | None, start: dict | None) -> list[list[str]]:
    """Rows ``[measure, reference, sam_jax, ratio, bar, CPU seconds]`` for one model."""
    rows = []
    for label, key, scale, unit, bar in TIME_ROWS:
        o = ours["timings"].get(key)
        r = ref["timings"].get(key) if ref else None
        if o is None:
            continue
        speedup = r["median"] / o["median"] if r else None
        cpu = f"{fmt(r['cpu_median'])} / {fmt(o['cpu_median'])}" if r else fmt(o["cpu_median"])
        if key + "_masks" in ours:
            counts = f"{ref[key + '_masks']} / {ours[key + '_masks']}" if ref else str(ours[key + "_masks"])
            label = f"{label}: masks kept {counts}"
        rows.append(
            [
                f"{label} ({unit})",
                fmt(r["median"] * scale) if r else "n/a",
                fmt(o["median"] * scale),
                f"{speedup:.2f}x faster" if speedup else "",
                _bar(speedup, bar, ">="),
                cpu,
            ]
        )
    o_mem, r_mem = _peak_running(ours), _peak_running(ref) if ref else None
    ratio = o_mem / r_mem if r_mem else None
    rows.append(
        [
            "peak RSS while running (MiB)",
            fmt(r_mem / MB, 4) if r_mem else "n/a",
            fmt(o_mem / MB, 4),
            f"{ratio:.2f}x" if ratio else "",
            _bar(ratio, 0.7, "<="),
            "",
        ]
    )
    o_proc, r_proc = ours["memory"]["process_peak"], ref["memory"]["process_peak"] if ref else None
    rows.append(
        [
            "peak RSS of the whole process, incl. building the model (MiB)",
            fmt(r_proc / MB, 4) if r_proc else "n/a",
            fmt(o_proc / MB, 4),
            f"{o_proc / r_proc:.2f}x" if r_proc else "",
            "",
            "",
        ]
    )
    flops = ours["encoder_flops"]["analytic_matmul"]
    o_rate = flops / ours["timings"]["encoder"]["median"]
    r_rate = flops / ref["timings"]["encoder"]["median"] if ref else None
    frac = o_rate / ours["matmul_flops_per_s"]
    rows.append(
        [
            "encoder GFLOP/s (matmul FLOPs / encoder time)",
            fmt(r_rate / 1e9) if r_rate else "n/a",
            fmt(o_rate / 1e9),
            f"{frac:.0%} of jnp.matmul's rate",
            _bar(frac, 0.8, ">="),
            "",
        ]
    )
    peak = harness.bf16_peak_flops(ours["device"])
    if peak is not None:
        rows.append(["encoder MFU against the device's dense bf16 peak", "", f"{o_rate / peak:.1%}", "", "", ""])
    rows.append(
        [
            "matmul 4096^3, GFLOP/s (torch.mm / jnp.matmul, parameter dtype)",
            fmt(ref["matmul_flops_per_s"] / 1e9) if ref else "n/a",
            fmt(ours["matmul_flops_per_s"] / 1e9),
            "",
            "",
            "",
        ]
    )
    if start:
        for phase, bar in (("cold", 30.0), ("warm", 3.0)):
            compile_s = start[phase]["compile_overhead_s"]
            rows.append(
                [f"compile, {phase} persistent cache (s)", "", fmt(compile_s), "", _bar(compile_s, bar, "<="), ""]
            )
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="vit_b",
        help="comma-separated: vit_b,vit_l,vit_h and SAM 2 / 2.1 types (sam2.1_hiera_tiny, ...; run by sam2_speed.py)",
    )
    parser.add_argument("--quick", action="store_true", help="AMG on a 16x16 point grid instead of 32x32")
    parser.add_argument("--bf16", action="store_true", help="also run sam_jax in bf16 (sam_jax.runtime.precision)")
    parser.add_argument("--threads", type=int, default=harness.usable_cores(), help="cores/threads for both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median; >= 3)")
    parser.add_argument("--image", default="coffee", help="skimage.data photo")
    parser.add_argument("--skip", default="", help="comma-separated: reference, amg, startup")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--workdir",
        help="keep the workers' outputs here; a rerun with the same directory reuses finished workers"
        " (default: a temporary directory)",
    )
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (medians of at least three runs)")
    skip = set(filter(None, args.skip.split(",")))
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()

    results: dict[str, Any] = {}
    sam2_sections: list[str] = []
    report = ""
    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = Path(args.workdir)
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam_jax_bench_")))
        all_models = args.models.split(",")
        sam2_models = [m for m in all_models if m.startswith("sam2")]
        models = [m for m in all_models if m not in sam2_models]
        for model in models:
            model_skip = skip if model == models[0] else skip | {"amg", "startup"}
            common = ["--model", model, "--threads", str(args.threads), "--image", args.image]
            timing = [*common, "--repeats", str(args.repeats), "--skip", ",".join(sorted(model_skip))]
            timing += ["--quick"] if args.quick else []
            env = {**os.environ, "SAM_JAX_CACHE_DIR": str(tmp / f"cache_{model}")}
            sides = [("reference", "reference.py", [])] if "reference" not in skip else []
            sides.append(("ours", "ours.py", []))
            if args.bf16:
                # bf16 gets the encoder, decoder and memory rows (AMG is the same decoder again).
                bf16_skip = ",".join(sorted(model_skip | {"amg"}))
                sides.append(("ours_bf16", "ours.py", ["--dtype", "bfloat16", "--skip", bf16_skip]))
            entry: dict[str, Any] = {}
            for side, script, extra in sides:
                out, arrays = tmp / f"{side}_{model}.json", tmp / f"{side}_{model}.npz"
                entry[side] = run_worker(script, [*timing, *extra, "--out", str(out), "--arrays", str(arrays)], env)
                entry[side + "_arrays"] = str(arrays)
            if "startup" not in model_skip:
                entry["startup"] = {}
                for phase in ("cold", "warm"):
                    start_env = {**os.environ, "SAM_JAX_CACHE_DIR": str(tmp / f"startup_cache_{model}")}
                    out = tmp / f"start_{phase}_{model}.json"
                    if phase == "cold" and not out.is_file():
                        shutil.rmtree(start_env["SAM_JAX_CACHE_DIR"], ignore_errors=True)
                    entry["startup"][phase] = run_worker("startup.py", [*common, "--out", str(out)], start_env)
            results[model] = _summarise(entry)
            # Written after every model, so an interrupted run leaves what it finished.
            report = render(results, args, started, load_before, os.getloadavg())
            Path(args.results).write_text(report)
            Path(args.results).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        for model in sam2_models:
            sam2_sections.append(_sam2_section(model, args, tmp))
            report = (render(results, args, started, load_before, os.getloadavg()) if results else "") + "\n".join(
                sam2_sections
            )
            Path(args.results).write_text(report)
    print("\n" + report)
    print(f"wrote {args.results}")


def _sam2_section(model: str, args: argparse.Namespace, tmp: Path) -> str:
    """A SAM 2 model's rows: ``sam2_speed.py`` (set_image, 1-point predict and AMG at 32 points per
    side against Meta's sam2, interleaved in one process), its Markdown under a ``##`` heading."""
    out = tmp / f"sam2_{model}.md"
    if out.is_file():
        print(f"# {out.name}: kept from an earlier run in this work directory", flush=True)
        REUSED.append(out.name)
    else:
        cmd = [sys.executable, str(HERE / "sam2_speed.py"), "--model", model, "--threads", str(args.threads)]
        cmd += ["--rounds", str(args.repeats), "--results", str(out)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    text = out.read_text()
    return "\n#" + text if text.startswith("# ") else "\n" + text


def _summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """Worker outputs for one model, with the array comparisons done (arrays themselves dropped)."""
    import numpy as np

    def load(side: str) -> dict[str, Any]:
        with np.load(entry[side + "_arrays"]) as f:
            return {k: f[k] for k in f.files}

    out = {k: v for k, v in entry.items() if not k.endswith("_arrays")}
    ours = load("ours")
    if "reference" in entry:
        out["ours_vs_reference"] = compare(ours, load("reference"))
    if "ours_bf16" in entry:
        out["bf16_vs_fp32"] = compare(load("ours_bf16"), ours)
    return out


def render(results: dict, args: argparse.Namespace, started, load_before, load_after) -> str:
    """RESULTS.md: context, one table per model, the output cross-checks and the method."""
    first = next(iter(results.values()))
    ours, ref = first["ours"], first.get("reference")
    m = ours["machine"]
    busy = max(load_before[0], load_after[0]) > 0.5
    lines = [
        "# sam_jax vs the PyTorch reference",
        "",
        f"Written by `python benchmarks/run.py {' '.join(sys.argv[1:])}` on {started:%Y-%m-%d %H:%M} UTC.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {fmt((m['memory_bytes'] or 0) / 2**30)} GiB RAM; {m['os']};"
        f" Python {m['python']}",
        f"- sam_jax: {ours['device']} ({ours['num_devices']} device(s)); jax {ours['versions']['jax']},"
        f" flax {ours['versions']['flax']}",
    ]
    if ref:
        tc = ref["torch_config"]
        lines.append(
            f"- reference: {ref['device']}; torch {ref['versions']['torch']}, segment-anything 1.0;"
            f" {'; '.join(tc['libraries'])}; oneDNN enabled: {tc['mkldnn_enabled']}; CPU capability"
            f" {tc['cpu_capability']}; torch threads {ref['threads']['torch.get_num_threads']}"
        )
    if REUSED:
        lines.append(
            f"- kept from an earlier invocation in the work directory (measured then; the load averages below are"
            f" this invocation's): {', '.join(REUSED)}"
        )
    lines += [
        f"- threads: each side's process pinned to the same {args.threads} core(s) with sched_setaffinity (XLA:CPU"
        f" sizes its thread pool from the schedulable cores), torch.set_num_threads({args.threads}),"
        f" OMP_NUM_THREADS=MKL_NUM_THREADS={args.threads}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}"
        + (
            ": **the machine was shared with other jobs; wall times are inflated and noisy, the CPU-seconds"
            " column (user + system time of the process) is the steadier comparison**"
            if busy
            else ""
        ),
        f"- input: skimage.data.{args.image}; fixture weights (seed {harness.WEIGHTS_SEED}); medians of"
        f" {args.repeats} timed runs after one warm-up on both sides (10 runs for the 1-point decoder call; the"
        " reference's AMG runs have no warm-up of their own, see Method)",
        "",
    ]
    for model, res in results.items():
        lines += [f"## {model}", ""]
        rows = model_rows(res["ours"], res.get("reference"), res.get("startup"))
        header = ["measure", "reference", "sam_jax", "ratio", "bar", "CPU s (reference / sam_jax)"]
        lines += [markdown_table(header, rows), ""]
        if "ours_vs_reference" in res:
            lines += ["Same inputs, same outputs (sam_jax vs reference, fp32):", ""]
            lines += [markdown_table(["check", "value"], [[k, _v(v)] for k, v in res["ours_vs_reference"].items()]), ""]
        if "ours_bf16" in res:
            lines += _bf16_section(res)
        if "startup" in res:
            lines += _startup_section(res["startup"])
    lines += [
        "## Method",
        "",
        "- Encoder: `SamPredictor.set_image(photo)` on both sides (resize, normalise, encode; sam_jax blocked on"
        " the embedding). Decoder call: `predict(one point, multimask_output=True)` to NumPy masks at the photo's"
        f" size. Batch: the reference's `predict_torch` with {harness.NUM_BOXES} boxes (`multimask_output=False`,"
        " outputs to NumPy) against sam_jax's `predict_batch(boxes=...)`.",
        "- AMG: `SamAutomaticMaskGenerator(model, **settings).generate(photo)` on both sides with"
        f" `{harness.amg_kwargs('amg_default', args.quick)}` (the reference's defaults), and again with"
        f" `{harness.AMG_SETTINGS['amg_pass_all']}`, and with `{harness.AMG_SETTINGS['amg_many']}` (masks"
        " kept: reference / sam_jax in each row's label). The weights are random: some candidates pass the"
        " predicted-IoU threshold (237 of 1024 at 32 points per side on coffee) but none the stability"
        " threshold, so the defaults keep nothing, while thresholds of 0 (which the reference treats as 'no"
        " filter') send every candidate through stability scoring at full resolution and box NMS, which keeps"
        " one of their near-identical masks. The third setting carries a realistic mask set (a few hundred)"
        f" through stability scoring, NMS, upscaling and the output records. {harness.AMG_MANY_NOTE}"
        " sam_jax gets one untimed"
        " warm-up per setting (it compiles); the reference gets none (it compiles nothing, and its process has"
        " already run the same encoder and decoder for the rows above), which saves minutes per run.",
        "- Peak RSS while running: each side's own process, high-water mark over the encoder, decoder and AMG"
        " phases (reset after building the model through /proc/self/clear_refs): weights, runtime and"
        " activations, not the one-off cost of building the model from NumPy arrays.",
        "- Encoder GFLOP/s: the encoder's matmul FLOPs (`harness.encoder_flops`: 2 per multiply-add, windowed"
        " attention on the zero-padded grid as the architecture defines it; XLA's cost analysis is in"
        " RESULTS.json) over the median set_image time, against a 4096^3 `jnp.matmul` timed in the same process.",
        "- Compile: a fresh process with an empty `SAM_JAX_CACHE_DIR`, then a second one reusing the cache the"
        " first filled; compile = first (set_image + predict) minus the second, in the same process.",
        "- Profile of sub-parts on both sides: `python benchmarks/breakdown.py` (writes PROFILE.md).",
    ]
    return "\n".join(lines) + "\n"


def _bf16_section(res: dict) -> list[str]:
    b, o = res["ours_bf16"], res["ours"]
    rows = []
    for label, key, scale, unit, _ in TIME_ROWS:
        if key in b["timings"]:
            fp32, bf16 = o["timings"][key]["median"], b["timings"][key]["median"]
            rows.append([f"{label} ({unit})", fmt(fp32 * scale), fmt(bf16 * scale), f"{fp32 / bf16:.2f}x"])
    rows.append(["peak RSS while running (MiB)", fmt(_peak_running(o) / MB, 4), fmt(_peak_running(b) / MB, 4), ""])
    parity = [[k, _v(v)] for k, v in res["bf16_vs_fp32"].items()]
    return [
        "sam_jax in bf16 (`sam_jax.runtime.precision.cast_model`: bf16 weights and matmul operands, fp32 accumulation"
        " and everything else):",
        "",
        markdown_table(["measure", "fp32", "bf16", "speed-up"], rows),
        "",
        markdown_table(["bf16 against fp32 (sam_jax)", "value"], parity),
        "",
    ]


def _startup_section(start: dict) -> list[str]:
    keys = ["import_s", "build_s", "first_mask_s", "steady_mask_s", "compile_overhead_s", "cache_entries"]
    rows = [[phase, *(_v(start[phase][k]) for k in keys)] for phase in ("cold", "warm")]
    header = ["", "import (s)", "build model (s)", "first mask (s)", "steady mask (s)", "compile (s)", "cache entries"]
    return [
        "Start-up of a fresh process (SamPredictor; first set_image + predict), cold then warm persistent cache:",
        "",
        markdown_table(header, rows),
        "",
    ]


def _v(v: Any) -> str:
    return fmt(v) if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
