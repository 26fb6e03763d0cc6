"""``sam-jax annotate`` against its bar: click latency in a real browser, and no saved object lost
to a ``kill -9`` of the server.

Both start the server as a user does (``python -m sam_jax.apps.annotate.cli annotate DIR --port 0``,
the demo model) in a subprocess, through :class:`annotate_latency.AnnotateServer` of
examples/annotate_latency.py; the latency test drives the page with Chromium as
test_annotate_browser.py does (it skips or fails the same way without a browser).

Latency (definitions in examples/annotate_latency.py, all times taken inside the page):

- first mask: page starts opening an image in no cache -> a click made as soon as the image shows
  -> its mask painted on the canvas; must be at most the server's embedding time for that image + 0.3 s
  (median over 3 such images, each number printed);
- click -> mask painted: the median of 20 clicks (new objects and negative points), after warm-up
  clicks on another image and the server's own decoder warm-up, at most 150 ms.

The numbers are printed (``pytest -s``). ``python examples/annotate_latency.py --random-weights vit_b``
measures the same for vit_b (not run here: minutes of compiling on a CPU).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import io
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from test_annotate_browser import CHROMIUM_ARGS, _browser_or_skip, tinted

from sam_jax.apps.annotate import rle

from annotate_helpers import decode, iou, make_images

# pycocotools' decode warns about NumPy 2's copy keyword; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
FIRST_MASK_SLACK_S = 0.3
CLICK_TO_MASK_MS = 150.0


def _latency_module():
    path = Path(__file__).parents[1] / "examples" / "annotate_latency.py"
    spec = importlib.util.spec_from_file_location("annotate_latency", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("annotate_latency", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


annotate_latency = _latency_module()


# --- latency ------------------------------------------------------------------------------------


def test_first_mask_and_click_to_mask_latency(tmp_path):
    sync_api, chromium = _browser_or_skip()
    folder = annotate_latency.make_folder(tmp_path / "images", trials=3)
    with annotate_latency.AnnotateServer(folder).start() as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        result = annotate_latency.measure(page, server, clicks=20, trials=3, timeout_s=300)
        print("\n" + result.report())

        # What was timed is what the user sees: every saved mask is drawn on the canvas.
        anns = json.loads((folder / "annotations" / "shapes.png.json").read_text())["annotations"]
        assert len(anns) == 1 + 10  # the first-mask click, then 10 new objects of 2 clicks each
        assert all(len(a["prompts"]["points"]) == (1 if i == 0 else 2) for i, a in enumerate(anns))
        page.keyboard.press("Escape")
        page.evaluate("window.annotator.whenIdle()")
        union = np.logical_or.reduce([decode(a["segmentation"]) for a in anns])
        assert iou(tinted(page, folder / "shapes.png"), union) >= 0.9
        browser.close()
    assert not errors, errors
    assert len(result.clicks_ms) == 20 and len(result.first_mask_s) == 3
    assert result.overhead_s <= FIRST_MASK_SLACK_S, result.report()
    assert result.median_ms <= CLICK_TO_MASK_MS, result.report()


# --- kill -9 ------------------------------------------------------------------------------------


def _request(url: str, method: str = "GET", body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _busy_mask(rng: random.Random, h: int = 256, w: int = 256) -> dict[str, Any]:
    """A square with a grid of holes: long RLE strings, so each save writes a sizeable file."""
    m = np.zeros((h, w), bool)
    y0, x0, size = rng.randrange(0, h - 64), rng.randrange(0, w - 64), rng.randrange(24, 64)
    m[y0 : y0 + size, x0 : x0 + size] = True
    m[y0 : y0 + size : 2, x0 : x0 + size : 3] = False
    return rle.encode(m)


def _object(oid: int, seg: dict[str, Any]) -> dict[str, Any]:
    prompts = {"points": [[10.5, 20.5]], "point_labels": [1], "box": None, "mask_index": 0, "multimask": True}
    return {"id": oid, "name": f"obj {oid}", "label": "shape", "score": 0.5, "prompts": prompts, "segmentation": seg}


class Writer(threading.Thread):
    """Saves growing documents (one object more each time) round-robin over ``names`` until the server
    stops answering; records per image the last acknowledged document and the one in flight."""

    def __init__(self, url: str, names: list[str], docs: dict[str, dict[str, Any]], seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.names, self.rng = url, names, random.Random(seed)
        self.acked = docs  # name -> {"revision", "objects"} as the server confirmed it
        self.in_flight: dict[str, Any] | None = None  # {"name", "revision", "objects"} sent, not answered
        self.saves = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        while True:
            name = self.names[i % len(self.names)]
            i += 1
            doc = self.acked[name]
            oid = max((o["id"] for o in doc["objects"]), default=0) + 1
            objects = [*doc["objects"], _object(oid, _busy_mask(self.rng))]
            self.in_flight = {"name": name, "revision": doc["revision"] + 1, "objects": objects}
            body = {"revision": doc["revision"], "done": False, "objects": objects}
            try:
                status, answer = _request(f"{self.url}api/annotations?name={name}", "PUT", body, timeout=30)
            except (OSError, ValueError, http.client.HTTPException):  # the server is gone (refused, reset, cut)
                return
            if status != 200:
                self.error = AssertionError(f"save refused: {status} {answer}")
                return
            assert answer["revision"] == doc["revision"] + 1
            self.acked[name] = {"revision": answer["revision"], "objects": objects}
            self.in_flight = None
            self.saves += 1


def _on_disk(folder: Path) -> dict[str, dict[str, Any]]:
    """Every annotation file under its final name: parsed (it must be), by image name."""
    out = {}
    root = folder / "annotations"
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".cache/"):
            continue
        data = json.loads(path.read_text())  # a partial file would fail here
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()  # pycocotools accepts it
        meta = data["sam_jax_annotate"]
        out[rel.removesuffix(".json")] = {"revision": meta["revision"], "objects": data["annotations"]}
    return out


def _same_objects(saved: list[dict[str, Any]], sent: list[dict[str, Any]]) -> bool:
    return [(o["id"], o["segmentation"]["counts"]) for o in saved] == [
        (o["id"], o["segmentation"]["counts"]) for o in sent
    ]


def test_kill_9_mid_annotation_loses_no_saved_object(tmp_path):
    names = ["a.png", "b.png", "sub/c.png"]
    folder = make_images(tmp_path / "images", (*names, "d.png", "e.png"))
    acked = {n: {"revision": 0, "objects": []} for n in names}
    rounds, unanswered, landed = 3, 0, 0
    for rnd in range(rounds):
        server = annotate_latency.AnnotateServer(folder, "--labels", "shape", "--no-warmup").start()
        try:
            # What a restarted server serves is what was acknowledged (or the save in flight at the kill).
            for name in names:
                status, doc = _request(f"{server.url}api/annotations?name={name}")
                assert status == 200, doc
                assert doc["revision"] == acked[name]["revision"], (rnd, name)
                assert _same_objects(doc["objects"], acked[name]["objects"]), (rnd, name)
            writer = Writer(server.url, names, acked, seed=rnd)
            writer.start()
            deadline = time.monotonic() + 120
            while writer.saves < 12:
                assert writer.is_alive() and writer.error is None, writer.error
                assert time.monotonic() < deadline, "saves too slow"
                time.sleep(0.01)
            # A predict (computing an image's embedding, compiling the decoder) in flight too.
            body = {"name": ["d.png", "e.png", "d.png"][rnd], "points": [[125.5, 75.5]], "point_labels": [1]}
            predict = threading.Thread(target=_try_request, args=(f"{server.url}api/predict", body), daemon=True)
            predict.start()
            time.sleep(random.Random(rnd).uniform(0.0, 0.3))
            while writer.in_flight is None:  # kill -9 with a save sent and not answered
                time.sleep(0.0005)
        finally:
            server.kill()
        writer.join(30)
        predict.join(30)
        assert not writer.is_alive() and writer.error is None, writer.error
        assert server.proc.returncode == -9
        killed_during = writer.in_flight  # the save never answered (the server died during it or before)
        unanswered += killed_during is not None

        disk = _on_disk(folder)
        for name in names:
            a = acked[name]
            d = disk.get(name, {"revision": 0, "objects": []})
            if killed_during and killed_during["name"] == name and d["revision"] == killed_during["revision"]:
                # The save in flight reached the disk whole before the kill; the server never answered it.
                assert _same_objects(d["objects"], killed_during["objects"]), name
                acked[name] = {"revision": d["revision"], "objects": killed_during["objects"]}
                landed += 1
            else:
                assert d["revision"] == a["revision"], (rnd, name, d["revision"], a["revision"])
                assert _same_objects(d["objects"], a["objects"]), (rnd, name)
        leftovers = [p.name for p in (folder / "annotations").rglob("*") if p.name.endswith(".tmp")]
        assert all(n.startswith(".") for n in leftovers), leftovers  # only hidden temporary names

    # The last restart: every object saved in any round is there and the work goes on.
    with annotate_latency.AnnotateServer(folder, "--labels", "shape", "--no-warmup").start() as server:
        total = 0
        for name in names:
            status, doc = _request(f"{server.url}api/annotations?name={name}")
            assert status == 200 and _same_objects(doc["objects"], acked[name]["objects"]), name
            total += len(doc["objects"])
        status, answer = _request(
            f"{server.url}api/annotations?name=a.png",
            "PUT",
            {"revision": acked["a.png"]["revision"], "done": True, "objects": acked["a.png"]["objects"]},
        )
        assert status == 200, answer
        status, listing = _request(f"{server.url}api/images")
        assert {i["name"]: i["objects"] for i in listing["images"]}["a.png"] == len(acked["a.png"]["objects"])
        status, out = _request(
            f"{server.url}api/predict", "POST", {"name": "d.png", "points": [[125.5, 75.5]], "point_labels": [1]}
        )
        assert status == 200 and decode(out["masks"][out["best"]]["segmentation"])[75, 125], out
    print(
        f"\n{rounds} kill -9 rounds, {unanswered} with a save unanswered ({landed} of them on disk whole): "
        f"{total} objects saved, all there; temporary files left: {len(leftovers)} (hidden .tmp names)"
    )
    assert total >= rounds * 12


def _try_request(url: str, body: Any) -> None:
    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):  # killed while it ran: expected
        _request(url, "POST", body, timeout=120)
