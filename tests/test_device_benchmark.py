"""``benchmarks/device.py`` works: its CPU ``--smoke`` run (the tiny config) measures every planned
row and writes them all; a later run with ``--resume`` keeps the measured rows and marks the ones
its budget cannot hold. The figures themselves are for accelerators and are not checked here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "device.py"
KINDS = {"encoder", "decoder", "parity", "amg", "reference"}
HAS_REFERENCE = all(importlib.util.find_spec(m) is not None for m in ("torch", "segment_anything"))


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("device") / "DEVICE.md"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(out.with_suffix(".json").read_text())


def test_smoke_measures_every_planned_row(smoke):
    out, data = smoke
    rows = {r["key"]: r for r in data["rows"]}
    assert list(rows) == data["meta"]["planned"]
    assert {r["kind"] for r in rows.values()} == KINDS
    assert data["meta"]["planned"][0] == "encoder/tiny/bfloat16/b2/default"  # the bar's row leads
    for key, r in rows.items():
        if r["kind"] == "reference" and not HAS_REFERENCE:
            assert r["status"] == "failed" and "not importable" in r["reason"], r
            continue
        assert r["status"] == "ok", (key, r["reason"])
        if r["kind"] == "parity":
            continue
        assert r["first_s"] > 0 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"], r
        if r["kind"] in ("encoder", "reference"):
            assert r["img_s"] == pytest.approx(r["batch"] / r["median_s"]), r
    for r in rows.values():
        if r["kind"] == "encoder":
            assert r["mfu"] is None and r["flops_per_s"] > 0  # a CPU has no bf16 peak in the table
            assert r["attention_kernel"] == "xla"
        if r["kind"] == "amg":
            assert r["points_per_side"] == 2 and r["masks"] >= 0
    parity = rows["parity/tiny"]
    # bf16 vs fp32 of the tiny model on coffee (measured: point masks IoU >= 0.97, boxes >= 0.90).
    assert 0.85 <= parity["point_mask_iou_min"] <= 1 and 0.85 <= parity["64_box_mask_iou_min"] <= 1
    assert 0 < parity["embedding_max_abs"] < 0.1 * parity["embedding_scale"]
    text = out.read_text()
    assert "Image encoder (sam_jax" in text and "Automatic mask generation" in text and "bf16 against fp32" in text
    assert "Rows not measured" not in text or not HAS_REFERENCE


def test_resume_keeps_measured_rows_and_skips_what_the_budget_cannot_hold(smoke, tmp_path):
    _, data = smoke
    dropped = ["amg/tiny/float32/ppb64", "encoder/tiny/bfloat16/b1/xla"]
    for r in data["rows"]:
        if r["key"] in dropped:
            r["status"] = "skipped"
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(data))
    out = tmp_path / "resumed.md"
    proc = run("--smoke", "--budget-s", "0", "--resume", str(earlier), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["key"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert list(rows) == data["meta"]["planned"]
    for key, r in rows.items():
        if key in dropped:
            assert r["status"] == "skipped" and r["reason"].startswith("budget"), r
        elif r["status"] == "ok":
            assert r["run"] == "earlier"
    text = out.read_text()
    assert "Kept from an earlier run" in text and all(f"`{k}`: skipped: budget" in text for k in dropped)
