"""The annotation web app: static page + JSON API (:func:`create_app`).

Routes (every error is ``{"error": "..."}`` with a 4xx status):

- ``GET /``: the page; ``GET /static/...``: its script and style.
- ``GET /api/config``: labels, model, folders, image count.
- ``GET /api/images``: ``{"images": [{"name", "objects", "done"}], "total", "annotated"}``.
- ``GET /api/image?name=``: the image's pixels exactly as the model sees them.
- ``GET /api/annotations?name=``: the saved document; ``PUT`` (same URL) saves one (atomic write).
- ``POST /api/embed {"name"}``: compute or load the embedding, then prefetch the next image's.
- ``POST /api/predict {"name", "points", "point_labels", "box", "multimask"}``: mask candidates.
- ``POST /api/auto {"name", "points_per_side", "pred_iou_thresh", "stability_score_thresh"}``:
  "segment everything" proposals.
- ``GET /api/export``: the COCO dataset of the folder (download); ``POST``: write ``<output>/coco.json``.
- ``GET /api/status``: model worker counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sam_jax.apps.annotate import validation
from sam_jax.apps.annotate.engine import Engine, ImageReadError
from sam_jax.apps.annotate.guard import LOCAL_HOSTS, ApiError, GuardMiddleware, error_response, read_json
from sam_jax.apps.annotate.paths import ImageFolder, OutputFolder, PathError
from sam_jax.apps.annotate.store import AnnotationStore, StoreError

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 8 << 20
DEFAULT_LABELS = ("object",)
# Formats every browser draws as stored; others (TIFF, GIF's first frame) are re-encoded as PNG.
_BROWSER_FORMATS = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_NO_CACHE = {"cache-control": "no-cache"}


@dataclass
class Annotator:
    """What the routes share (``app.state.annotator``)."""

    images: ImageFolder
    output: OutputFolder
    store: AnnotationStore
    engine: Engine
    labels: list[str]
    checkpoint: Path
    prefetch: bool
    warmup: bool
    max_body_bytes: int
    owns_engine: bool


def _state(request: Request) -> Annotator:
    return request.app.state.annotator


def _api(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Answer the expected refusals of ``handler`` as 4xx JSON errors."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.message)
        except (PathError, StoreError) as e:
            return error_response(e.status, str(e))
        except ImageReadError as e:
            return error_response(422, str(e))
        except ValueError as e:  # validation of the request's values
            return error_response(400, str(e))
        except OSError as e:  # the server's disk, not the request: still a JSON answer
            return error_response(500, f"file system error: {e}")

    return wrapped


def _query_name(request: Request) -> str:
    names = request.query_params.getlist("name")
    if len(names) != 1:
        raise ApiError(400, "give exactly one ?name=<image path relative to the images folder>")
    return names[0]


async def _body(request: Request) -> dict[str, Any]:
    return await read_json(request, _state(request).max_body_bytes)


async def _wait(future: Any) -> Any:
    """Await a model-worker future without blocking the event loop."""
    return await asyncio.wrap_future(future)


# --- routes -------------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)


@_api
async def get_config(request: Request) -> Response:
    a = _state(request)
    return JSONResponse(
        {
            "labels": a.labels,
            "model": a.engine.model_name,
            "checkpoint": str(a.checkpoint),
            "images_dir": str(a.images.root),
            "output_dir": str(a.output.root),
            "save_png": a.store.save_png,
            "max_body_bytes": a.max_body_bytes,
        }
    )


def _listing(a: Annotator) -> dict[str, Any]:
    images = [{"name": n, **a.store.summary(n)} for n in a.images.names()]
    done = sum(1 for i in images if i["objects"] or i["done"])
    return {"images": images, "total": len(images), "annotated": done}


@_api
async def list_images(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(_listing, _state(request)))


def _image_response(a: Annotator, name: str) -> Response:
    path = a.images.resolve(name)
    media = _BROWSER_FORMATS.get(path.suffix.lower())
    if media is not None:
        try:
            with Image.open(path) as im:
                # The model sees the image upright by its EXIF orientation (sam_jax.io.read_image); a
                # rotated file is sent as that upright image, re-encoded, so the page and the masks
                # agree whatever the browser does with EXIF.
                rotated = im.getexif().get(0x0112, 1) not in (0, 1)
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"cannot read image {name!r}: {e}") from e
        if not rotated:
            return FileResponse(path, media_type=media, headers=_NO_CACHE)
    buf = io.BytesIO()
    Image.fromarray(a.engine.read_image(path)).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers=_NO_CACHE)


@_api
async def get_image(request: Request) -> Response:
    return await run_in_threadpool(_image_response, _state(request), _query_name(request))


@_api
async def get_annotations(request: Request) -> Response:
    a = _state(request)
    return JSONResponse(await run_in_threadpool(a.store.load, _query_name(request)), headers=_NO_CACHE)


@_api
async def put_annotations(request: Request) -> Response:
    a = _state(request)
    name = _query_name(request)
    a.images.resolve(name)
    body = await _body(request)
    return JSONResponse(await run_in_threadpool(a.store.save, name, body))


def _next_image(a: Annotator, name: str) -> Path | None:
    names = a.images.names()
    if name not in names:
        return None
    i = names.index(name)
    return a.images.resolve(names[i + 1]) if i + 1 < len(names) else None


@_api
async def embed(request: Request) -> Response:
    a = _state(request)
    body = await _body(request)
    name = body.get("name")
    path = a.images.resolve(name)
    size = a.store.image_size(name)
    result = await _wait(a.engine.embed(path))
    if a.warmup:
        a.engine.warmup(path)
        a.warmup = False  # once: the programs are then compiled for every image
    if a.prefetch and (following := await run_in_threadpool(_next_image, a, name)) is not None:
        a.engine.prefetch(following)
        result["prefetch"] = following.relative_to(a.images.root).as_posix()
    return JSONResponse({**result, "height": size[0], "width": size[1]})


@_api
async def predict(request: Request) -> Response:
    a = _state(request)
    body = await _body(request)
    name = body.get("name")
    path = a.images.resolve(name)
    prompts = validation.prompts(body, a.store.image_size(name))
    return JSONResponse(await _wait(a.engine.predict(path, prompts)))


@_api
async def automatic(request: Request) -> Response:
    a = _state(request)
    body = await _body(request)
    name = body.get("name")
    path = a.images.resolve(name)
    settings = {
        "points_per_side": validation.bounded(body, "points_per_side", 16, 2, 64, integer=True),
        "pred_iou_thresh": validation.bounded(body, "pred_iou_thresh", 0.88, 0.0, 1.0),
        "stability_score_thresh": validation.bounded(body, "stability_score_thresh", 0.92, 0.0, 1.0),
    }
    proposals = await _wait(a.engine.automatic(path, settings))
    return JSONResponse({"proposals": proposals, "settings": settings})


@_api
async def export(request: Request) -> Response:
    a = _state(request)
    if request.method == "GET":
        data = await run_in_threadpool(a.store.export)
        headers = {"content-disposition": 'attachment; filename="coco.json"'}
        return JSONResponse(data, headers=headers)
    path = a.output.path("coco.json")
    counts = await run_in_threadpool(a.store.write_export, path)
    return JSONResponse({"path": str(path), **counts})


@_api
async def status(request: Request) -> Response:
    a = _state(request)
    return JSONResponse({"stats": dict(a.engine.stats), "pending": a.engine.busy(), "model": a.engine.model_name})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message)


# --- the app ------------------------------------------------------------------------------------


def create_app(
    images_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    *,
    save_png: bool = False,
    model: Any = None,
    prefetch: bool = True,
    warmup: bool = False,
    allowed_hosts: Sequence[str] | None = LOCAL_HOSTS,
    max_body_bytes: int = MAX_BODY_BYTES,
    cache_limit_bytes: int | None = 2 << 30,
    engine: Engine | None = None,
) -> Starlette:
    """The annotation app for the images under ``images_dir``.

    Args:
      images_dir: folder of images (walked recursively; hidden entries skipped).
      output_dir: where annotations go (default ``images_dir/annotations``; created). The embedding
        cache lives in its ``.cache/embeddings``.
      checkpoint: sam_jax checkpoint directory (default: the bundled demo model).
      labels: class labels offered on the page (default ``["object"]``).
      save_png: also write each mask as a PNG.
      model: the model already loaded from ``checkpoint`` (skips loading it again).
      prefetch: compute the next image's embedding in the background.
      warmup: compile the decoder for common prompt shapes after the first image opens.
      allowed_hosts: Host header values answered (None: any, for ``--allow-remote``).
      max_body_bytes: largest request body accepted (413 above).
      cache_limit_bytes: size the on-disk embedding cache is trimmed to (None: unlimited).
      engine: an :class:`Engine` to share (tests); the app then does not close it.
    """
    images_root = Path(images_dir)
    out = Path(output_dir) if output_dir is not None else images_root / "annotations"
    if images_root.is_dir() and out.resolve() in (images_root.resolve(), *images_root.resolve().parents):
        raise ValueError(f"the output folder {out} must not be the images folder or contain it; pick a subfolder")
    images = ImageFolder(images_root, exclude=[out])
    output = OutputFolder(out)
    labels = list(dict.fromkeys(label.strip() for label in (labels or DEFAULT_LABELS) if label.strip()))
    if not labels:
        raise ValueError("give at least one non-empty label")
    if checkpoint is None:
        from sam_jax.assets import demo_checkpoint_dir

        checkpoint = demo_checkpoint_dir()
    checkpoint = Path(checkpoint)
    owns = engine is None
    if engine is None:
        if model is None:
            from sam_jax import load_sam

            model = load_sam(checkpoint)
        engine = Engine(model, checkpoint, output.sub(".cache", "embeddings"), cache_limit_bytes=cache_limit_bytes)
    store = AnnotationStore(images, output, labels, save_png=save_png, model_name=engine.model_name)
    annotator = Annotator(
        images, output, store, engine, labels, checkpoint, prefetch, warmup, max_body_bytes, owns_engine=owns
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if annotator.owns_engine:
            await run_in_threadpool(annotator.engine.close)

    routes = [
        Route("/", index),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/api/config", get_config),
        Route("/api/images", list_images),
        Route("/api/image", get_image),
        Route("/api/annotations", get_annotations, methods=["GET"]),
        Route("/api/annotations", put_annotations, methods=["PUT"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/auto", automatic, methods=["POST"]),
        Route("/api/export", export, methods=["GET", "POST"]),
        Route("/api/status", status),
    ]
    middleware = [Middleware(GuardMiddleware, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes)]
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error}, lifespan=lifespan
    )
    app.state.annotator = annotator
    return app
