"""``sam-jax annotate`` in a real browser: Chromium driven by Playwright against a live server.

The server (uvicorn in a thread, demo model) serves a temporary copy of examples/images/shapes.png.
Masks saved by the page must match ``sam_jax.SamPredictor`` on the saved prompts (IoU >= 0.999),
be drawn on the canvas, survive undo/redo and a page reload.

Needs Playwright (``pip install playwright``) and Chromium (``apt-get install -y chromium``; another
binary with ``SAM_JAX_CHROMIUM=/path``). Without them the tests skip, except under CI (env ``CI``
set) where they fail. A screenshot is written to ``$SAM_JAX_ARTIFACTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sam_jax.apps.annotate.server import create_app

from annotate_helpers import SHAPES, decode, demo_model, iou, make_images, reference_mask

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PENTAGON = (125.5, 75.5)
OUTSIDE_PENTAGON = (40.5, 40.5)  # on the light square next to it: a negative point
TRIANGLE_BOX = ((6.0, 150.0), (95.0, 251.0))
# pycocotools' decode warns about NumPy 2's copy keyword; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _chromium() -> str | None:
    if os.environ.get("SAM_JAX_CHROMIUM"):
        path = os.environ["SAM_JAX_CHROMIUM"]
        return path if os.access(path, os.X_OK) else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def _browser_or_skip() -> tuple[Any, str]:
    """(playwright.sync_api, chromium path); skips locally, fails under CI, when one is missing."""
    reason = None
    try:
        from playwright import sync_api
    except ImportError:
        sync_api, reason = None, "playwright is not installed (pip install playwright)"
    chromium = _chromium()
    if reason is None and chromium is None:
        reason = "chromium is not installed (apt-get install -y chromium, or set SAM_JAX_CHROMIUM)"
    if reason is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"browser tests cannot run under CI: {reason}")
        pytest.skip(reason)
    return sync_api, chromium


class LiveServer:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def browser():
    sync_api, chromium = _browser_or_skip()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = make_images(tmp_path / "images", ("shapes.png",))
    rgb = np.asarray(Image.open(SHAPES).convert("RGB"))
    Image.fromarray(rgb[::-1].copy()).save(images / "z_flipped.png")
    return images


@pytest.fixture
def server(folder: Path):
    app = create_app(folder, model=demo_model(), labels=["shape", "ring"], prefetch=False)
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    open_page(pg, server.url)
    yield pg
    context.close()
    assert not errors, f"errors in the page: {errors}"


# --- helpers ------------------------------------------------------------------------------------


def open_page(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_function("window.annotator !== undefined")
    pg.evaluate("window.annotator.ready")
    idle(pg)


def idle(pg) -> dict[str, Any]:
    """Wait until every action ran, the embedding is ready and the document is saved."""
    state = pg.evaluate("window.annotator.whenIdle()")
    assert state["saveError"] is None, state
    return state


def at(pg, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel position (x, y), checked to be on the visible canvas."""
    p = pg.evaluate(
        """([x, y]) => {
          const p = window.annotator.imageToClient(x, y);
          return {...p, hit: document.elementFromPoint(p.x, p.y) === document.querySelector('#view')};
        }""",
        [x, y],
    )
    assert p["hit"], f"image position ({x}, {y}) is not on the visible canvas"
    return p["x"], p["y"]


def click(pg, x: float, y: float, **kw) -> None:
    pg.mouse.click(*at(pg, x, y), **kw)
    idle(pg)


def drag(pg, a: tuple[float, float], b: tuple[float, float], button: str = "left") -> None:
    pg.mouse.move(*at(pg, *a))
    pg.mouse.down(button=button)
    pg.mouse.move(*at(pg, *b), steps=8)
    pg.mouse.up(button=button)
    idle(pg)


def press(pg, key: str) -> None:
    pg.keyboard.press(key)
    idle(pg)


def saved(folder: Path, name: str = "shapes.png") -> list[dict[str, Any]]:
    path = folder / "annotations" / f"{name}.json"
    return json.loads(path.read_text())["annotations"] if path.exists() else []


def canvas_rgb(pg) -> np.ndarray:
    """The canvas colour at the centre of every image pixel, ``(H, W, 3)``."""
    flat = pg.evaluate(
        """() => {
          const a = window.annotator, S = a.state, c = document.querySelector('#view');
          const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          const out = new Array(S.width * S.height * 3);
          for (let y = 0; y < S.height; y++) for (let x = 0; x < S.width; x++) {
            const p = a.imageToCanvas(x + 0.5, y + 0.5);
            const i = 4 * (p.y * c.width + p.x), j = 3 * (y * S.width + x);
            out[j] = data[i]; out[j + 1] = data[i + 1]; out[j + 2] = data[i + 2];
          }
          return [S.height, S.width, out];
        }"""
    )
    h, w, values = flat
    return np.array(values, np.int16).reshape(h, w, 3)


def tinted(pg, image: Path) -> np.ndarray:
    """Pixels the page draws differently from the image itself: the mask overlays."""
    original = np.asarray(Image.open(image).convert("RGB"), np.int16)
    return np.abs(canvas_rgb(pg) - original).max(axis=2) > 25


def assert_matches_predictor(folder: Path, ann: dict[str, Any]) -> None:
    mask = decode(ann["segmentation"])
    score = iou(mask, reference_mask(folder / "shapes.png", ann["prompts"]))
    assert score >= 0.999, (ann["name"], score)


def screenshot(pg, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SAM_JAX_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pg.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


# --- tests --------------------------------------------------------------------------------------


def test_points_box_undo_redo_and_reload(page, folder, server, tmp_path):
    assert page.inner_text("#progress-text") == "0 / 2 annotated"
    # Object 1: a positive point on the pentagon, a negative one (right click) beside it.
    click(page, *PENTAGON)
    click(page, *OUTSIDE_PENTAGON, button="right")
    (pentagon,) = saved(folder)
    assert pentagon["prompts"]["point_labels"] == [1, 0]
    np.testing.assert_allclose(pentagon["prompts"]["points"], [PENTAGON, OUTSIDE_PENTAGON], atol=0.5)
    assert pentagon["label"] == "shape" and pentagon["source"] == "prompt"
    assert_matches_predictor(folder, pentagon)
    assert decode(pentagon["segmentation"])[75, 125]

    # Object 2: accept the first, pick the label, drag a box around the triangle.
    press(page, "Enter")
    page.select_option("#label-select", "ring")
    drag(page, *TRIANGLE_BOX)
    anns = saved(folder)
    assert [a["label"] for a in anns] == ["shape", "ring"]
    triangle = anns[1]
    assert triangle["prompts"]["points"] == []
    np.testing.assert_allclose(triangle["prompts"]["box"], [*TRIANGLE_BOX[0], *TRIANGLE_BOX[1]], atol=0.5)
    assert_matches_predictor(folder, triangle)
    assert page.inner_text("#progress-text") == "1 / 2 annotated"

    # The masks are drawn on the canvas.
    press(page, "Escape")
    masks = [decode(a["segmentation"]) for a in anns]
    drawn = tinted(page, folder / "shapes.png")
    assert iou(drawn, masks[0] | masks[1]) >= 0.9
    screenshot(page, "annotate-two-objects.png", tmp_path)

    # Undo removes the box object from the page and the file; redo brings it back.
    press(page, "z")
    assert [a["id"] for a in saved(folder)] == [1]
    assert iou(tinted(page, folder / "shapes.png"), masks[0]) >= 0.9
    press(page, "y")
    assert [a["id"] for a in saved(folder)] == [1, 2]

    # A reload (or a restarted server) restores everything.
    open_page(page, server.url)
    objects = page.evaluate("window.annotator.state.doc.objects.map(o => [o.id, o.label, o.segmentation.counts])")
    assert objects == [[a["id"], a["label"], a["segmentation"]["counts"]] for a in anns]
    assert iou(tinted(page, folder / "shapes.png"), masks[0] | masks[1]) >= 0.9


def test_candidates_names_hide_delete_and_navigation(page, folder, server):
    click(page, *PENTAGON)
    page.keyboard.down("Shift")  # shift+click: a negative point too
    click(page, *OUTSIDE_PENTAGON)
    page.keyboard.up("Shift")
    assert saved(folder)[0]["prompts"]["point_labels"] == [1, 0]
    assert page.locator("#candidates button").count() == 3
    for key, index in (("1", 0), ("3", 2)):
        press(page, key)
        (ann,) = saved(folder)
        assert ann["prompts"]["mask_index"] == index
        assert_matches_predictor(folder, ann)

    name = page.locator("#objects li input.obj-name").first
    name.fill("pentagon")
    name.press("Enter")
    idle(page)
    assert saved(folder)[0]["name"] == "pentagon"

    mask = decode(saved(folder)[0]["segmentation"])
    press(page, "h")
    assert saved(folder)[0]["hidden"] is True
    assert tinted(page, folder / "shapes.png")[mask].mean() < 0.1
    press(page, "h")
    assert saved(folder)[0]["hidden"] is False

    # After a reload the candidates are recomputed from the saved prompts.
    open_page(page, server.url)
    page.locator("#objects li .swatch").first.click()
    press(page, "2")
    (ann,) = saved(folder)
    assert ann["prompts"]["mask_index"] == 1 and ann["name"] == "pentagon"
    assert_matches_predictor(folder, ann)

    press(page, "Delete")
    assert saved(folder) == []
    press(page, "j")
    assert page.evaluate("window.annotator.state.name") == "z_flipped.png"
    press(page, "k")
    assert page.evaluate("window.annotator.state.name") == "shapes.png"


def test_segment_everything_brush_eraser_zoom_and_pan(page, folder):
    press(page, "a")
    n = page.locator("#proposals li").count()
    assert n >= 2, "the demo model proposes several shapes"
    page.locator("#proposals li").first.click()  # discard the first proposal
    assert page.locator("#proposals li.discarded").count() == 1
    press(page, "Enter")
    anns = saved(folder)
    assert len(anns) == n - 1 and {a["source"] for a in anns} == {"auto"}

    # Zoom in on the empty top-right corner and pan a little: clicks still land on image pixels.
    view = page.evaluate("window.annotator.state.view")
    pg_x, pg_y = at(page, 220, 20)
    page.mouse.move(pg_x, pg_y)
    page.mouse.wheel(0, -400)
    zoomed = page.evaluate("window.annotator.state.view")
    assert zoomed["s"] > view["s"] * 1.5
    drag(page, (190, 50), (200, 60), button="middle")
    panned = page.evaluate("window.annotator.state.view")
    assert panned["x"] != zoomed["x"]

    # Brush with nothing selected: a new hand-drawn object.
    press(page, "Escape")
    press(page, "b")
    drag(page, (205, 20), (240, 20))
    manual = saved(folder)[-1]
    assert manual["source"] == "manual" and manual["edited"] is True
    m = decode(manual["segmentation"])
    assert m[20, 205:240].all() and 300 < m.sum() < 800
    # Eraser on it (it is selected): a cut through the middle.
    press(page, "e")
    drag(page, (222, 12), (222, 28))
    m = decode(saved(folder)[-1]["segmentation"])
    assert not m[20, 222] and m[20, 206]
    press(page, "z")
    assert decode(saved(folder)[-1]["segmentation"])[20, 222]
