"""sam_jax on an accelerator in a few minutes: encoder throughput and MFU, decoder latency, AMG,
bf16 against fp32 and the PyTorch reference on the same chip, in one results file.

    python benchmarks/device.py [--models vit_h,vit_b] [--budget-s 220] [--out benchmarks/DEVICE.md]
    python benchmarks/device.py --smoke --out /tmp/DEVICE.md   # CPU, the tiny config: checks the script

Rows run in order of importance, vit_h bf16 at batch 8 first (issue 15's bar: >= 40 % MFU and
above segment-anything-fast's A100 throughput scaled by the chips' bf16 peaks). A row whose
expected time (the longest finished row of its kind and model, else of its model, else of its
kind) would take the run past ``--budget-s`` is skipped and listed as such. The results file (a
Markdown table and the raw figures as JSON beside it) is rewritten after every row, so a run killed
from outside keeps what it measured. Random weights (the parity fixtures' ``random_state_dict``),
the ``coffee`` photo; every timing is a median after the first call, which is reported apart
(compile time ~= first call - median). Encoder rows time the jitted encoder (``inference.encode``,
what ``SamPredictor.set_image_batch`` runs, batch sharded over every device) on a batch already on
the devices; the ``set_image_batch`` column adds the host's resize and the transfer.

The PyTorch reference (``segment_anything``, if importable) runs in a worker process of its own
(its own CUDA context and allocator; JAX's preallocation is turned off so that both fit), started
on first use and asked for one row at a time over pipes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import selectors
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import harness
from run import fmt, markdown_table

HERE = Path(__file__).resolve().parent
# segment-anything-fast's published image-encoder throughput on an A100 (bf16, SDPA + Triton
# rel-pos kernel, batched; PyTorch blog "Accelerating Generative AI with PyTorch: Segment
# Anything, Fast", 2023): the bar, scaled to this chip by the ratio of dense bf16 peaks.
SAM_FAST_A100_IMG_S = {"vit_b": 92.0, "vit_h": 25.0}
MFU_BAR = 0.40


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement. ``kernel``: the platform's attention kernel (``default``) or ``xla``;
    ``points_per_batch``: AMG's points per step per device."""

    kind: str
    model: str
    dtype: str = "bfloat16"
    batch: int = 1
    kernel: str = "default"
    points_per_batch: int = 64

    @property
    def key(self) -> str:
        parts = {
            "encoder": [self.dtype, f"b{self.batch}", self.kernel],
            "reference": [self.dtype, f"b{self.batch}"],
            "decoder": [self.dtype],
            "parity": [],
            "amg": [self.dtype, f"ppb{self.points_per_batch}"],
        }[self.kind]
        return "/".join([self.kind, self.model, *parts])


def plan(models: list[str], big: int = 8) -> list[Row]:
    """Every row, most important first. The first model: the bf16 encoder at batch ``big`` with
    the platform's attention kernel, then with XLA's, then the reference's; bf16 batch 1, the
    decoder and AMG (they run on it); fp32 at both batches and the bf16-vs-fp32 parity. Each further
    model: the same encoder and reference rows. Then the reference's other rows and the extras."""
    first, rows = models[0], []
    for m in models:
        rows += [Row("encoder", m, "bfloat16", big), Row("encoder", m, "bfloat16", big, "xla")]
        rows += [Row("reference", m, "bfloat16", big), Row("encoder", m, "bfloat16", 1)]
        if m == first:
            rows += [Row("decoder", m, "bfloat16"), Row("amg", m)]
        rows += [Row("encoder", m, "float32", big), Row("encoder", m, "float32", 1)]
        if m == first:
            rows += [Row("parity", m)]
    for m in models:
        rows += [Row("reference", m, d, b) for d, b in (("float32", big), ("bfloat16", 1), ("float32", 1))]
    rows += [Row("encoder", m, "bfloat16", 1, "xla") for m in models]
    rows += [Row("decoder", first, "float32"), Row("amg", first, points_per_batch=256), Row("amg", first, "float32")]
    return rows


def estimate(row: Row, done: list[dict[str, Any]]) -> float:
    """Expected seconds of ``row``: the longest finished row of the same kind and model, else of
    the same model, else of the same kind, else 0 (nothing to go by: run it)."""
    ok = [r for r in done if r["status"] == "ok"]
    for same in (
        lambda r: r["kind"] == row.kind and r["model"] == row.model,
        lambda r: r["model"] == row.model,
        lambda r: r["kind"] == row.kind,
    ):
        walls = [r["wall_s"] for r in ok if same(r)]
        if walls:
            return max(walls)
    return 0.0


# --- the PyTorch reference, in its own process --------------------------------------------------


class ReferenceWorker:
    """``device.py --reference-worker MODEL``, driven over pipes: one JSON line asked, one answered."""

    def __init__(self, model: str, *, cpu: bool, timeout: float) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--reference-worker", model]
        self.proc = subprocess.Popen(
            [*cmd, *(["--cpu"] if cpu else [])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.info = self._read(timeout)

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(timeout, 0.0)):
                self.close()
                raise TimeoutError(f"the reference worker did not answer within {timeout:.0f} s (killed)")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference worker exited with status {self.proc.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def reference_worker(model: str, cpu: bool) -> None:
    """The worker's side: build the reference with the fixture weights, then time its image encoder
    (``sam.image_encoder`` on a preprocessed batch; bf16 = ``torch.autocast``) per request."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # answers only; anything printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg, default=str) + "\n")

    t0 = time.perf_counter()
    try:
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        from reference_model import build_unweighted
    except ImportError as e:
        answer({"error": f"the reference is not importable here: {e}"})
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    sam = build_unweighted(model)
    sam.load_state_dict({k: torch.from_numpy(v) for k, v in harness.fixture_state_dict(model).items()}, strict=True)
    sam = sam.float().eval().to(device)
    image = harness.photo("coffee")
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
    x = sam.preprocess(torch.as_tensor(resized, device=device).permute(2, 0, 1)[None].float())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    answer(
        {
            "setup_s": time.perf_counter() - t0,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "segment_anything": _version("segment-anything"),
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        }
    )
    for line in sys.stdin:
        req = json.loads(line)
        try:
            batch = x.expand(req["batch"], -1, -1, -1).contiguous()
            bf16 = req["dtype"] == "bfloat16"

            def run(batch=batch, bf16=bf16) -> None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    sam.image_encoder(batch)
                sync()

            t = time.perf_counter()
            run()
            first = time.perf_counter() - t
            timing = harness.timed(run, repeats=req["repeats"], warmup=0)
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
            answer({"first_s": first, "timing": timing, "device_peak_bytes": peak})
            del batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # this row's failure (memory, say); the worker takes the next request
            answer({"error": f"{type(e).__name__}: {e}"[:2000]})


# --- the JAX side -------------------------------------------------------------------------------


class Bench:
    """Models, predictors and reference workers, built on first use and kept for later rows."""

    def __init__(self, args: argparse.Namespace, deadline: float) -> None:
        import jax

        self.args, self.deadline = args, deadline
        self.image = harness.photo("coffee")
        self.models: dict[tuple[str, str], Any] = {}
        self.predictors: dict[tuple[str, str], Any] = {}
        self.workers: dict[str, ReferenceWorker | Exception] = {}
        self.build_s: dict[str, float] = {}
        self.device = jax.devices()[0]
        self.peak = harness.bf16_peak_flops(self.device.device_kind)

    def model(self, name: str, dtype: str):
        if (name, dtype) not in self.models:
            from sam_jax import build_sam, get_config
            from sam_jax.runtime.precision import cast_model

            if (name, "float32") not in self.models:
                t = time.perf_counter()
                cfg = get_config(name)
                self.models[(name, "float32")] = build_sam(
                    cfg, params=_rules().to_params(harness.fixture_state_dict(name), cfg)
                )
                self.build_s[name] = time.perf_counter() - t
            if dtype != "float32":
                self.models[(name, dtype)] = cast_model(self.models[(name, "float32")], dtype)
        return self.models[(name, dtype)]

    def predictor(self, name: str, dtype: str):
        if (name, dtype) not in self.predictors:
            from sam_jax import SamPredictor

            self.predictors[(name, dtype)] = SamPredictor(self.model(name, dtype))
        return self.predictors[(name, dtype)]

    def repeats(self, kind: str) -> int:
        return {"amg": max(1, self.args.repeats // 4), "decoder": 2 * self.args.repeats}.get(kind, self.args.repeats)

    # --- rows -----------------------------------------------------------------------------------

    def encoder(self, row: Row) -> dict[str, Any]:
        import jax

        from sam_jax.inference import ExecutionPolicy, canvas_batch, encode
        from sam_jax.runtime import sharding

        pred = self.predictor(row.model, row.dtype)
        policy = ExecutionPolicy.for_mesh(pred.mesh)
        if row.kernel != "default":
            policy = dataclasses.replace(policy, attention_kernel=row.kernel)
        images = [self.image] * row.batch
        size = sharding.padded_batch_size(row.batch, pred.mesh)
        batch, sizes = sharding.shard_batch(canvas_batch(images, pred.img_size, size), pred.mesh)

        def run() -> None:
            jax.block_until_ready(encode(pred.graphdef, pred.params, batch, sizes, policy))

        out = self._first_and_steady(run, self.args.repeats)
        flops = harness.encoder_flops(pred.model.config.image_encoder) * size
        out.update(
            attention_kernel=policy.attention_kernel,
            padded_batch=size,
            img_s=row.batch / out["median_s"],
            flops_per_s=flops / out["median_s"],
            mfu=None if self.peak is None else flops / out["median_s"] / (self.peak * pred.mesh.size),
        )
        if row.kernel == "default":  # the same program through the public entry point, host work included

            def set_image_batch() -> None:
                pred.set_image_batch(images)
                jax.block_until_ready(pred.features)

            e2e = harness.timed(set_image_batch, repeats=max(1, self.args.repeats // 2), warmup=1)
            out["set_image_batch_img_s"] = row.batch / e2e["median"]
        out["device_peak_bytes"] = (self.device.memory_stats() or {}).get("peak_bytes_in_use")
        return out

    def decoder(self, row: Row) -> dict[str, Any]:
        import numpy as np

        pred = self.predictor(row.model, row.dtype)
        pred.set_image(self.image)
        h, w = self.image.shape[:2]
        point, label = np.array([[w / 2, h / 2]], np.float32), np.array([1], np.int32)
        return self._first_and_steady(
            lambda: pred.predict(point, label, multimask_output=True), self.repeats("decoder")
        )

    def parity(self, row: Row) -> dict[str, Any]:
        import numpy as np

        p = harness.prompts(self.image.shape[:2])
        got = {}
        for dtype in ("float32", "bfloat16"):
            pred = self.predictor(row.model, dtype)
            pred.set_image(self.image)
            point = pred.predict(p["point_coords"], p["point_labels"], multimask_output=True)
            boxes = pred.predict_batch(boxes=p["boxes"], multimask_output=False)
            got[dtype] = (np.asarray(pred.features, np.float32), point, boxes)
        (e32, p32, b32), (e16, p16, b16) = got["float32"], got["bfloat16"]
        point_iou, box_iou = _mask_ious(p32[0], p16[0]), _mask_ious(b32[0], b16[0])
        return {
            "embedding_max_abs": float(np.max(np.abs(e32 - e16))),
            "embedding_scale": float(np.max(np.abs(e32))),
            "point_mask_iou_min": float(point_iou.min()),
            "point_mask_iou_mean": float(point_iou.mean()),
            f"{len(box_iou)}_box_mask_iou_min": float(box_iou.min()),
            f"{len(box_iou)}_box_mask_iou_mean": float(box_iou.mean()),
            "iou_prediction_max_abs": float(max(np.max(np.abs(p32[1] - p16[1])), np.max(np.abs(b32[1] - b16[1])))),
        }

    def amg(self, row: Row) -> dict[str, Any]:
        from sam_jax.amg import SamAutomaticMaskGenerator

        kwargs = harness.amg_kwargs("amg_many", quick=False)
        kwargs["points_per_batch"] = row.points_per_batch
        if self.args.smoke:
            kwargs["points_per_side"] = 2
        generator = SamAutomaticMaskGenerator(self.model(row.model, row.dtype), **kwargs)
        records: list = []
        out = self._first_and_steady(lambda: records.append(generator.generate(self.image)), self.repeats("amg"))
        out.update(
            masks=len(records[-1]), points_per_side=kwargs["points_per_side"], settings=harness.AMG_SETTINGS["amg_many"]
        )
        return out

    def reference(self, row: Row) -> dict[str, Any]:
        timeout = self.deadline - time.perf_counter()
        worker = self.workers.get(row.model)
        if worker is None:
            try:
                worker = ReferenceWorker(row.model, cpu=self.args.smoke, timeout=timeout)
            except (RuntimeError, TimeoutError, OSError) as e:
                worker = e
            self.workers[row.model] = worker
        if isinstance(worker, TimeoutError):
            raise worker
        if isinstance(worker, Exception):
            raise RuntimeError(f"no reference worker: {worker}")
        try:
            got = worker.ask(
                {"dtype": row.dtype, "batch": row.batch, "repeats": self.args.repeats},
                self.deadline - time.perf_counter(),
            )
        except TimeoutError as e:  # the worker was killed: later rows of this model have none
            self.workers[row.model] = e
            raise
        t = got["timing"]
        return {
            "first_s": got["first_s"],
            "median_s": t["median"],
            "min_s": t["min"],
            "max_s": t["max"],
            "img_s": row.batch / t["median"],
            "device_peak_bytes": got["device_peak_bytes"],
            "worker": worker.info,
        }

    @staticmethod
    def _first_and_steady(fn, repeats: int) -> dict[str, Any]:
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        timing = harness.timed(fn, repeats=repeats, warmup=0)
        return {
            "first_s": first,
            "compile_s": max(first - timing["median"], 0.0),
            "median_s": timing["median"],
            "min_s": timing["min"],
            "max_s": timing["max"],
        }

    def close(self) -> None:
        for w in self.workers.values():
            if isinstance(w, ReferenceWorker):
                w.close()


def _rules():
    try:
        from sam_jax.convert import rules  # installed (pip install -e .)
    except ImportError:  # a bare checkout: the converter's source folder is on sys.path (harness)
        from convert import rules
    return rules


def _mask_ious(a, b):
    """IoU of boolean masks ``(..., H, W)`` pairwise (1 where both are empty)."""
    import numpy as np

    a, b = a.reshape(-1, *a.shape[-2:]).astype(bool), b.reshape(-1, *b.shape[-2:]).astype(bool)
    inter, union = np.sum(a & b, axis=(1, 2)), np.sum(a | b, axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- the results file ---------------------------------------------------------------------------


def bars(meta: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Issue 15's bars against the bf16 batch-8 encoder rows (default kernel)."""
    out = []
    peak = meta["bf16_peak_flops"]
    for model, a100 in SAM_FAST_A100_IMG_S.items():
        r = rows.get(Row("encoder", model, "bfloat16", meta["big_batch"]).key)
        if r is None:
            continue
        ok = r["status"] == "ok"
        if model == "vit_h":
            mfu = r.get("mfu") if ok else None
            met = "n/a" if mfu is None else ("met" if mfu >= MFU_BAR else "MISSED")
            label = f"{model} bf16 batch {meta['big_batch']}: MFU of the dense bf16 peak"
            out.append([label, f">= {MFU_BAR:.0%}", _pct(mfu), met])
        need = None if peak is None else a100 * peak / harness.BF16_PEAK_FLOPS["A100"]
        got = r.get("img_s") if ok else None
        met = "n/a" if need is None or got is None else ("met" if got >= need else "MISSED")
        label = (
            f"{model} bf16 batch 8 img/s: segment-anything-fast's A100 {a100:g} img/s x this chip's / A100's bf16 peak"
        )
        out.append([label, f">= {fmt(need)}", fmt(got), met])
    return out


def render(meta: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """The Markdown results file."""
    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    ref = {(r["model"], r["dtype"], r["batch"]): r for r in ok.values() if r["kind"] == "reference"}
    lines = [
        f"# sam_jax device benchmark: {meta['device']['kind']}",
        "",
        f"Written by `{meta['command']}` on {meta['date']}"
        f" in {meta['elapsed_s']:.0f} s (budget {meta['budget_s']:g} s).",
        "",
        f"- device: {meta['device']['platform']}: {meta['device']['kind']} x {meta['device']['count']};"
        f" dense bf16 peak {fmt(meta['bf16_peak_flops'] and meta['bf16_peak_flops'] / 1e12)} TFLOP/s"
        " (`benchmarks/harness.py`)",
        f"- host: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; Python {meta['machine']['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- attention kernel: the platform's default is `{meta['default_attention_kernel']}`"
        f" (`SAM_JAX_ATTENTION_KERNEL`={meta['env'].get('SAM_JAX_ATTENTION_KERNEL')}); rows marked xla force plain"
        " XLA attention. The encoder's attention always carries the rel-pos bias, so `cudnn` runs it with the"
        " Pallas kernel (cuDNN takes the decoder's bias-free attentions).",
        f"- fp32 rows: matmul precision `{meta['matmul_precision']}` (JAX's default: on NVIDIA GPUs XLA may use TF32"
        " for fp32 products; the reference's fp32 rows use torch's defaults, recorded in the JSON).",
        f"- weights: random (`harness.fixture_state_dict`, seed {harness.WEIGHTS_SEED}); photo: skimage `coffee`"
        f" {meta['image_shape'][1]}x{meta['image_shape'][0]}; build time (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in meta["build_s"].items()),
        f"- persistent compilation cache: {meta['compile_cache']}; `XLA_PYTHON_CLIENT_PREALLOCATE`="
        f"{meta['env'].get('XLA_PYTHON_CLIENT_PREALLOCATE')}",
        "",
    ]
    if b := bars(meta, rows):
        lines += ["Issue 15's bars:", "", markdown_table(["bar", "needed", "measured", ""], b), ""]
    enc = [r for r in ok.values() if r["kind"] == "encoder"]
    if enc:
        table = []
        for r in enc:
            peer = ref.get((r["model"], r["dtype"], r["batch"])) if r["kernel"] == "default" else None
            table.append(
                [
                    r["model"],
                    r["dtype"],
                    str(r["batch"]),
                    r["attention_kernel"],
                    fmt(r["img_s"]),
                    fmt(r["median_s"] * 1e3),
                    fmt(r["flops_per_s"] / 1e12),
                    _pct(r["mfu"]),
                    fmt(r.get("set_image_batch_img_s")),
                    fmt(peer and peer["img_s"]),
                    fmt(peer and r["img_s"] / peer["img_s"]),
                    fmt(r["first_s"]),
                    fmt(r["compile_s"]),
                ]
            )
        header = ["model", "dtype", "batch", "attention", "img/s", "ms/batch", "TFLOP/s", "MFU"]
        header += ["set_image_batch img/s", "reference img/s", "speed-up", "first call (s)", "compile ~ (s)"]
        lines += ["Image encoder (sam_jax; `inference.encode` on a batch on the devices):", ""]
        lines += [markdown_table(header, table), ""]
    if ref:
        table = [
            [m, d, str(b), fmt(r["img_s"]), fmt(r["median_s"] * 1e3), fmt(r["first_s"])] for (m, d, b), r in ref.items()
        ]
        worker = next(iter(ref.values()))["worker"]
        lines += [
            f"PyTorch reference (segment-anything {worker.get('segment_anything')}, torch {worker.get('torch')},"
            f" {worker.get('device')}; `sam.image_encoder` on a preprocessed batch, bf16 = `torch.autocast`):",
            "",
            markdown_table(["model", "dtype", "batch", "img/s", "ms/batch", "first call (s)"], table),
            "",
        ]
    dec = [r for r in ok.values() if r["kind"] == "decoder"]
    if dec:
        table = [
            [r["model"], r["dtype"], fmt(r["median_s"] * 1e3), fmt(r["min_s"] * 1e3), fmt(r["first_s"])] for r in dec
        ]
        lines += ["Decoder, 1 point (`SamPredictor.predict`, 3 masks at the photo's size, on the host):", ""]
        lines += [markdown_table(["model", "dtype", "median (ms)", "min (ms)", "first call (s)"], table), ""]
    amg = [r for r in ok.values() if r["kind"] == "amg"]
    if amg:
        table = [
            [
                r["model"],
                r["dtype"],
                str(r["points_per_side"]),
                str(r["points_per_batch"]),
                fmt(r["median_s"] * 1e3),
                str(r["masks"]),
                fmt(r["first_s"]),
            ]
            for r in amg
        ]
        lines += [
            f"Automatic mask generation, one image, settings `{harness.AMG_SETTINGS['amg_many']}`"
            " (a realistic mask set):",
            "",
        ]
        header = ["model", "dtype", "points per side", "points per batch", "ms/image", "masks", "first call (s)"]
        lines += [markdown_table(header, table), ""]
    par = [r for r in ok.values() if r["kind"] == "parity"]
    for r in par:
        keys = [k for k in r if k.endswith(("_iou_min", "_iou_mean", "_max_abs", "_scale"))]
        lines += [f"bf16 against fp32 ({r['model']}, coffee; 1 centre point x 3 masks, {harness.NUM_BOXES} boxes):", ""]
        lines += [markdown_table(["measure", "value"], [[k, fmt(r[k], 4)] for k in keys]), ""]
    if "resumed_from" in meta:
        e = meta["resumed_from"]
        kept = [f"`{r['key']}`" for r in rows.values() if r["run"] == "earlier"]
        lines += [
            f"Kept from an earlier run (`{e['command']}`, {e['date']}; compilation cache {e['compile_cache']}):"
            f" {', '.join(kept) or 'none'}. The other rows were measured by this run, whose compiles may have"
            " been loads from the persistent cache the earlier run filled (see its entry count above).",
            "",
        ]
    rest = [r for r in rows.values() if r["status"] != "ok"]
    if rest:
        lines += ["Rows not measured:", ""]
        lines += [f"- `{r['key']}`: {r['status']}: {r['reason']}" for r in rest]
        lines += [""]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def write(out: Path, meta: dict[str, Any], rows: dict[str, dict[str, Any]], t0: float) -> None:
    """Rewrite the results file and its JSON (every planned row, measured or not)."""
    meta["elapsed_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    harness.write_json(out.with_suffix(".json"), {"meta": meta, "rows": list(rows.values())})
    out.write_text(render(meta, rows) + "\n")


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    t0 = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=None, help="comma-separated, first = decoder/AMG model (default vit_h,vit_b)"
    )
    parser.add_argument("--budget-s", type=float, default=220.0, help="skip rows that would end past this (seconds)")
    parser.add_argument("--out", type=Path, default=HERE / "DEVICE.md", help="results (Markdown; JSON beside it)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 10; smoke 1)")
    parser.add_argument(
        "--resume", type=Path, help="results JSON of an earlier run: its measured rows are kept, the others run"
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, the tiny config, a 2x2 AMG grid: checks the script")
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference rows")
    parser.add_argument("--reference-worker", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        reference_worker(args.reference_worker, args.cpu)
        return
    models = (args.models or ("tiny" if args.smoke else "vit_h,vit_b")).split(",")
    args.repeats = args.repeats or (1 if args.smoke else 10)
    big = 2 if args.smoke else 8  # the large encoder batch (the smoke run only checks the script)
    # Before JAX starts: the reference worker shares the GPU, so JAX takes memory as it needs it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from sam_jax.inference import ExecutionPolicy
    from sam_jax.runtime.compile_cache import enable_compilation_cache

    cache = enable_compilation_cache()
    cache_note = "off" if cache is None else f"{cache} ({sum(1 for _ in cache.iterdir())} entries at start)"
    deadline = t0 + args.budget_s
    bench = Bench(args, deadline)
    dev = bench.device
    meta: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/device.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget_s": args.budget_s,
        "device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count()},
        "bf16_peak_flops": bench.peak,
        "machine": harness.machine(),
        "versions": {
            d: _version(d)
            for d in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "libtpu", "flax", "numpy")
        },
        "default_attention_kernel": ExecutionPolicy.for_platform(dev.platform).attention_kernel,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "env": {
            k: os.environ.get(k) for k in ("SAM_JAX_ATTENTION_KERNEL", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS")
        },
        "compile_cache": cache_note,
        "image_shape": list(bench.image.shape),
        "build_s": bench.build_s,
        "big_batch": big,
        "planned": [r.key for r in plan(models, big)],
    }
    rows = {
        r.key: {"key": r.key, **dataclasses.asdict(r), "status": "pending", "reason": "not reached", "run": "this"}
        for r in plan(models, big)
    }
    if args.resume:
        earlier = json.loads(args.resume.read_text())
        kept = {r["key"]: {**r, "run": "earlier"} for r in earlier["rows"] if r["status"] == "ok" and r["key"] in rows}
        rows.update(kept)
        meta["resumed_from"] = {k: earlier["meta"][k] for k in ("command", "date", "compile_cache")}
    try:
        for row in plan(models, big):
            rec = rows[row.key]
            if rec["run"] == "earlier":
                continue
            now = time.perf_counter()
            expect = estimate(row, [r for r in rows.values() if r["run"] == "this"])
            if row.kind == "reference" and args.no_reference:
                rec.update(status="skipped", reason="--no-reference")
            elif now + expect > deadline:
                rec.update(status="skipped", reason=f"budget: {now - t0:.0f} s spent, this row ~{expect:.0f} s more")
            else:
                print(f"# {now - t0:6.1f} s  {row.key}", flush=True)
                try:
                    rec.update(getattr(bench, row.kind)(row), status="ok", reason="")
                except TimeoutError as e:
                    rec.update(status="skipped", reason=f"budget ran out during the row: {e}")
                except Exception as e:  # one row's failure (a kernel, memory) must not end the run
                    traceback.print_exc()
                    rec.update(status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:300])
                rec["wall_s"] = time.perf_counter() - now
            write(args.out, meta, rows, t0)
    finally:
        bench.close()
        write(args.out, meta, rows, t0)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
