"""How fast ``sam-jax annotate`` answers clicks, measured in a real browser; and the README screenshot.

    python examples/annotate_latency.py                                  # the bundled demo model
    python examples/annotate_latency.py --checkpoint CKPT_DIR            # a sam_jax checkpoint
    python examples/annotate_latency.py --random-weights vit_b           # vit_b with random weights
    python examples/annotate_latency.py --screenshot examples/screenshots/annotate.png

It starts the command a user runs, ``sam-jax annotate`` (as ``python -m sam_jax.apps.annotate.cli
annotate DIR --port 0``, decoder warm-up on), in a subprocess on a temporary folder of copies of
examples/images/shapes.png (``shapes.png``; ``shapes_1.png``, ... with one pixel changed, for more
first-mask trials; an upside-down ``z_warm.png``), and drives the page with Chromium through Playwright
(``pip install playwright``; Debian's ``/usr/bin/chromium``, or set ``SAM_JAX_CHROMIUM``). Every time
is taken inside the page, from the User Timing entries app.js sets:

- **embedding**: the server's time to compute the image embedding (the ``seconds`` of ``POST
  /api/embed`` when it reports ``"computed"``: read the image, run the image encoder, keep the state and
  write it to the disk cache), for an image that is in no cache.
- **first mask**: from the page starting to open that image (mark ``sam-jax:open``) to the mask of a
  click made as soon as the image shows being drawn on the canvas (``sam-jax:mask-painted``). It covers
  loading the image, the embedding, the decoder, the answer and the drawing. The bar: embedding + 0.3 s,
  checked on the median over ``--trials`` images (each one printed).
- **click -> mask**: per click, from the click's ``pointerdown`` event (its ``timeStamp``) to the end of
  the canvas draw that shows the new mask (measure ``sam-jax:click-to-mask``), i.e. what the user waits
  for. Clicks alternate between a new object (a positive point) and a negative point on it; the page is
  idle (saved) before each click. The median of ``--clicks`` clicks; the bar is 150 ms.

Warm-up first, not counted: the page opens ``z_warm.png`` (compiling the image encoder and the decoder
for one and two points: these are the "cold" numbers printed, what the first image of a fresh server
costs), and the server's own warm-up (``--no-warmup`` off) finishes. Then the other images are opened
with the ``k`` key (the previous image: the server prefetches the next image's embedding, never the
previous one's), shapes_N.png ... shapes_1.png and shapes.png last, whose clicks are then timed. The
"driver" times are the same clicks seen from Python (``mouse.click`` until the mask's entry is
visible): an upper bound that adds the DevTools-protocol round trips.

``--screenshot PNG`` instead annotates three objects on the bundled sample (a click on the pentagon, a
box around the triangle, a click on the ellipse) and saves the page, colour-reduced, as ``PNG``: this
is how examples/screenshots/annotate.png is made.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
SAMPLE = IMAGES / "shapes.png"
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
MEASURED, WARM = "shapes.png", "z_warm.png"
# Screenshot prompts on shapes.png (image pixels).
PENTAGON = (125.5, 75.5)
TRIANGLE_BOX = ((6.0, 150.0), (95.0, 251.0))
ELLIPSE = (203.5, 148.5)
SCREENSHOT_LABELS = "pentagon,triangle,ellipse"


def find_chromium() -> str | None:
    """``$SAM_JAX_CHROMIUM``, else the first Chromium or Chrome on the PATH."""
    if os.environ.get("SAM_JAX_CHROMIUM"):
        path = os.environ["SAM_JAX_CHROMIUM"]
        return path if os.access(path, os.X_OK) else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


# --- the server, as a user starts it ------------------------------------------------------------


class AnnotateServer:
    """``sam-jax annotate IMAGES_DIR --port 0 [ARGS]`` in a subprocess (``with`` stops it)."""

    def __init__(self, images_dir: str | os.PathLike, *args: str, env: dict[str, str] | None = None) -> None:
        self.cmd = [sys.executable, "-m", "sam_jax.apps.annotate.cli", "annotate", str(images_dir), "--port", "0"]
        self.cmd += list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    def start(self, timeout: float = 300.0) -> AnnotateServer:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, cwd=ROOT
        )
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, out=lines: out.extend(s), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"open (http://\S+)", "".join(self.stdout))):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers catch the last lines
                raise RuntimeError(f"sam-jax annotate exited with {self.proc.returncode}:\n{''.join(self.stderr)}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"sam-jax annotate did not start in {timeout:.0f} s:\n{''.join(self.stderr)}")
            time.sleep(0.05)
        self.url = found.group(1)
        # The URL is printed once the port is bound, a moment before uvicorn accepts connections.
        while True:
            try:
                self.get("api/config", timeout=5)
                return self
            except OSError as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"sam-jax annotate is not answering at {self.url}") from e
                time.sleep(0.05)

    def get(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def wait_warmup(self, timeout: float = 600.0) -> None:
        """Wait until the server compiled the decoder ahead of clicks (its ``--no-warmup`` is off)."""
        deadline = time.monotonic() + timeout
        while self.get("api/status")["stats"].get("warmups", 0) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the server's decoder warm-up did not finish")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or ``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        """Ctrl-C (SIGINT), as a user stops it; SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> AnnotateServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_folder(root: Path, trials: int = 3) -> Path:
    """``root`` holding ``shapes.png`` (a copy of the sample), ``trials - 1`` copies with one pixel
    changed (``shapes_1.png``, ...: other bytes, so no cached embedding) and ``z_warm.png`` (the
    sample upside down)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLE, root / MEASURED)
    with Image.open(SAMPLE) as im:
        rgb = im.convert("RGB")
    rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(root / WARM)
    for i in range(1, trials):
        copy = rgb.copy()
        copy.putpixel((0, 0), tuple((v + 17 * i) % 256 for v in rgb.getpixel((0, 0))))
        copy.save(root / f"shapes_{i}.png")
    return root


# --- the page -----------------------------------------------------------------------------------


def client_xy(page: Any, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel position (x, y)."""
    p = page.evaluate("([x, y]) => window.annotator.imageToClient(x, y)", [x, y])
    return p["x"], p["y"]


def idle(page: Any) -> None:
    state = page.evaluate("window.annotator.whenIdle()")
    if state["saveError"] is not None:
        raise RuntimeError(f"the page could not save: {state['saveError']}")


def image_size(page: Any) -> tuple[int, int]:
    return tuple(page.evaluate("[window.annotator.state.width, window.annotator.state.height]"))


_SHOWN = """name => { const a = window.annotator; return !!a && a.state.name === name && !!a.state.bitmap
  && !!a.state.doc; }"""
_OPENED = """name => {
  const open = performance.getEntriesByName('sam-jax:open').filter(e => e.detail.name === name).at(-1);
  if (!open) return null;
  const after = (n) => performance.getEntriesByName(n).filter(e => e.startTime >= open.startTime);
  const embedded = after('sam-jax:embedded').find(e => e.detail.name === name);
  const painted = after('sam-jax:mask-painted')[0];
  if (!embedded || !painted) return null;
  return {open: open.startTime, painted: painted.startTime, embedding: embedded.detail.embedding,
          seconds: embedded.detail.seconds};
}"""


def first_mask(page: Any, name: str, open_image: Any, point: tuple[float, float], timeout_s: float) -> dict:
    """Open image ``name`` (``open_image()``), click at fraction ``point`` of it as soon as it shows,
    and wait for the mask to be painted: ``{"embedding", "seconds", "first_mask_s"}``."""
    open_image()
    page.wait_for_function(_SHOWN, arg=name, timeout=timeout_s * 1000)
    w, h = image_size(page)
    page.mouse.click(*client_xy(page, point[0] * w, point[1] * h))
    times = page.wait_for_function(_OPENED, arg=name, timeout=timeout_s * 1000).json_value()
    idle(page)
    return {
        "embedding": times["embedding"],
        "seconds": times["seconds"],
        "first_mask_s": (times["painted"] - times["open"]) / 1000,
    }


def click_points(n: int) -> list[tuple[float, float]]:
    """``n`` distinct positions (fractions of the width and height) spread over the image."""
    cols = max(2, round(n**0.5))
    rows = -(-n // cols)
    grid = []
    for r in range(rows):
        for c in range(cols):  # odd rows shifted by half a step
            grid.append((0.1 + 0.8 * (c + 0.5 * (r % 2)) / cols, 0.1 + 0.8 * r / max(rows - 1, 1)))
    return grid[:n]


def click_to_mask(page: Any, points: Sequence[tuple[float, float]], timeout_s: float) -> tuple[list, list]:
    """Click at each fraction position (even: a new object, positive point; odd: a negative point on
    it), waiting for its mask to be painted and the page to be idle; returns (page ms, driver ms)."""
    w, h = image_size(page)
    in_page, driver = [], []
    for i, (fx, fy) in enumerate(points):
        if i % 2 == 0:
            page.keyboard.press("Enter")  # accept: the next click starts a new object
        idle(page)
        page.evaluate("performance.clearMeasures('sam-jax:click-to-mask')")
        x, y = client_xy(page, fx * w, fy * h)
        start = time.perf_counter()
        page.mouse.click(x, y, button="left" if i % 2 == 0 else "right")
        page.wait_for_function(
            "() => performance.getEntriesByName('sam-jax:click-to-mask').length > 0", timeout=timeout_s * 1000
        )
        driver.append((time.perf_counter() - start) * 1000)
        in_page.append(page.evaluate("performance.getEntriesByName('sam-jax:click-to-mask')[0].duration"))
    idle(page)
    return in_page, driver


@dataclass
class Latency:
    model: str = ""
    cold_embedding_s: float = 0.0  # first image of a fresh server: includes compiling the encoder
    cold_first_mask_s: float = 0.0  # ... and the decoder
    embedding_s: list[float] = field(default_factory=list)  # per opened image
    first_mask_s: list[float] = field(default_factory=list)
    clicks_ms: list[float] = field(default_factory=list)
    driver_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.clicks_ms)

    @property
    def overhead_s(self) -> float:
        """Median over the opened images of (first mask - embedding)."""
        return statistics.median(f - e for f, e in zip(self.first_mask_s, self.embedding_s, strict=True))

    def report(self) -> str:
        q = statistics.quantiles(self.clicks_ms, n=10) if len(self.clicks_ms) >= 2 else [self.median_ms] * 9
        return "\n".join(
            [
                f"model: {self.model}",
                f"cold (first image of a fresh server, compiling): embedding {self.cold_embedding_s:.3f} s, "
                f"first mask {self.cold_first_mask_s:.3f} s",
                "embedding (computed, server), s: " + " ".join(f"{v:.3f}" for v in self.embedding_s),
                "open -> first mask painted, s: " + " ".join(f"{v:.3f}" for v in self.first_mask_s),
                f"  first mask - embedding: median {self.overhead_s:+.3f} s (bar: <= 0.3 s)",
                f"click -> mask painted, {len(self.clicks_ms)} clicks: median {self.median_ms:.1f} ms "
                f"(p10 {q[0]:.1f}, p90 {q[-1]:.1f}, max {max(self.clicks_ms):.1f}; bar: 150 ms)",
                f"  as seen from the driver: median {statistics.median(self.driver_ms):.1f} ms",
                "  in page, ms: " + " ".join(f"{v:.0f}" for v in self.clicks_ms),
            ]
        )


def measure(page: Any, server: AnnotateServer, clicks: int = 20, trials: int = 3, timeout_s: float = 600.0) -> Latency:
    """The numbers above, on a fresh ``server`` serving ``make_folder(..., trials)``."""
    out = Latency(model=server.get("api/config")["model"])
    # Warm-up (not counted): the first image compiles the encoder; one and two point prompts compile
    # the decoder; then the server's own warm-up has to finish.
    cold = first_mask(page, WARM, lambda: page.goto(f"{server.url}#{WARM}"), (0.5, 0.3), timeout_s)
    out.cold_embedding_s, out.cold_first_mask_s = cold["seconds"], cold["first_mask_s"]
    click_to_mask(page, [(0.5, 0.5), (0.1, 0.1)], timeout_s)
    server.wait_warmup(timeout_s)
    idle(page)
    # Images in no cache, opened as a user does (k: the previous image, so the server's prefetching of
    # the next one does not compute it ahead), each with a click as soon as it shows; shapes.png last.
    for name in [f"shapes_{i}.png" for i in range(trials - 1, 0, -1)] + [MEASURED]:
        opened = first_mask(page, name, lambda: page.keyboard.press("k"), (0.49, 0.29), timeout_s)
        if opened["embedding"] != "computed":
            raise RuntimeError(f"the embedding of {name} came from the {opened['embedding']} cache, not computed")
        out.embedding_s.append(opened["seconds"])
        out.first_mask_s.append(opened["first_mask_s"])
    out.clicks_ms, out.driver_ms = click_to_mask(page, click_points(clicks), timeout_s)
    return out


# --- the README screenshot ----------------------------------------------------------------------


def screenshot(page: Any, server: AnnotateServer, path: Path, *, colors: int = 128) -> Path:
    """Three objects on shapes.png (click, box, click), the last one selected; saved colour-reduced."""
    from PIL import Image

    page.goto(f"{server.url}#{MEASURED}")
    page.wait_for_function(_SHOWN, arg=MEASURED)
    idle(page)
    page.mouse.click(*client_xy(page, *PENTAGON))
    idle(page)
    page.keyboard.press("Enter")
    page.select_option("#label-select", "triangle")
    page.mouse.move(*client_xy(page, *TRIANGLE_BOX[0]))
    page.mouse.down()
    page.mouse.move(*client_xy(page, *TRIANGLE_BOX[1]), steps=8)
    page.mouse.up()
    idle(page)
    page.keyboard.press("Enter")
    page.select_option("#label-select", "ellipse")
    page.mouse.click(*client_xy(page, *ELLIPSE))
    idle(page)
    page.mouse.move(*client_xy(page, 200, 40))  # the status bar shows the cursor's image position
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    with Image.open(raw) as im:
        im.convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
    raw.unlink()
    return path


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="sam_jax checkpoint directory (default: the demo model)")
    parser.add_argument(
        "--random-weights",
        metavar="MODEL",
        help="first write MODEL (a registry name, e.g. vit_b) with random weights to --checkpoint "
        "(default: a temporary folder); the timings do not depend on the weights",
    )
    parser.add_argument("--clicks", type=int, default=20, help="clicks measured after warm-up (default: 20)")
    parser.add_argument("--trials", type=int, default=3, help="images opened for the first-mask time (default: 3)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for any one step")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="write the README screenshot instead")
    parser.add_argument("--width", type=int, default=1100, help="browser viewport width (default: 1100)")
    parser.add_argument("--height", type=int, default=640, help="browser viewport height (default: 640)")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        parser.error("no Chromium found: apt-get install -y chromium, or set SAM_JAX_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="sam-jax-annotate-") as tmp:
        checkpoint = args.checkpoint
        if args.random_weights:
            import sam_jax

            checkpoint = checkpoint or Path(tmp) / f"random_{args.random_weights}"
            if not checkpoint.exists():
                print(f"writing {args.random_weights} with random weights to {checkpoint}", flush=True)
                sam_jax.save_sam(sam_jax.build_sam(args.random_weights), checkpoint)
        extra = ["--checkpoint", str(checkpoint)] if checkpoint else []
        if args.screenshot:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for f in ("shapes.png", "chelsea.jpg", "coffee.jpg"):
                shutil.copyfile(IMAGES / f, folder / f)
            server = AnnotateServer(folder, "--labels", SCREENSHOT_LABELS, "--no-warmup", *extra)
        else:
            server = AnnotateServer(make_folder(Path(tmp) / "images", args.trials), *extra)
        with server.start(args.timeout), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            if args.screenshot:
                path = screenshot(page, server, args.screenshot)
                print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
            else:
                print(measure(page, server, args.clicks, args.trials, args.timeout).report())
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
