"""``sam-jax annotate`` server: every endpoint, every refusal, saving, export and the embedding cache.

API level (Starlette's TestClient / httpx over ASGI) on copies of examples/images/shapes.png with
the bundled demo model; the browser tests are in test_annotate_browser.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from starlette.testclient import TestClient

from sam_jax.apps.annotate import cli as annotate_cli
from sam_jax.apps.annotate import rle
from sam_jax.apps.annotate.engine import model_identity
from sam_jax.apps.annotate.server import create_app
from sam_jax.assets import demo_checkpoint_dir
from sam_jax.io import read_image

from annotate_helpers import SHAPES, decode, demo_model, iou, make_images, reference_mask

BASE = "http://127.0.0.1"
PENTAGON = [125.5, 75.5]  # a point inside the dark pentagon of shapes.png
TRIANGLE_BOX = [5.0, 150.0, 95.0, 252.0]
# pycocotools' decode warns about NumPy 2's copy keyword; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def client(app) -> TestClient:
    return TestClient(app, base_url=BASE)


def make_app(images: Path, **kw):
    kw.setdefault("prefetch", False)
    return create_app(images, model=demo_model(), labels=kw.pop("labels", ["shape", "ring"]), **kw)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """images/: shapes.png, sub/b.png, a hidden file, a text file, a symlink pointing out of the folder,
    a symlinked folder pointing out, and an image inside the output folder."""
    images = make_images(tmp_path / "images", ("shapes.png", "sub/b.png"))
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (images / "link_out.png").symlink_to(outside / "secret.png")
    (images / "dir_out").symlink_to(outside, target_is_directory=True)
    (images / "link_in.png").symlink_to(images / "shapes.png")
    (images / ".hidden.png").write_bytes(SHAPES.read_bytes())
    (images / "notes.txt").write_text("not an image")
    (images / "annotations").mkdir()
    Image.new("RGB", (8, 8)).save(images / "annotations" / "inside_output.png")
    return images


@pytest.fixture
def app(folder: Path):
    return make_app(folder)


def doc_with(objects: list[dict], revision: int = 0, done: bool = False) -> dict:
    return {"revision": revision, "done": done, "objects": objects}


def make_object(seg: dict, oid: int = 1, **kw) -> dict:
    prompts = {"points": [PENTAGON], "point_labels": [1], "box": None, "mask_index": 0, "multimask": True}
    base = {"id": oid, "name": f"obj {oid}", "label": "shape", "score": 0.9, "prompts": prompts, "segmentation": seg}
    return {**base, **kw}


def square_rle(h: int = 256, w: int = 256, y0: int = 10, x0: int = 20, size: int = 30) -> dict:
    m = np.zeros((h, w), bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return rle.encode(m)


# --- page, config, listing, images --------------------------------------------------------------


def test_page_static_files_and_security_headers(app):
    with client(app) as c:
        r = c.get("/")
        assert r.status_code == 200 and "sam-jax annotate" in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        for asset in ("/static/app.js", "/static/app.css"):
            assert c.get(asset).status_code == 200
        assert c.get("/static/missing.js").json() == {"error": "not found"}


def test_config_lists_labels_and_model(app, folder):
    with client(app) as c:
        cfg = c.get("/api/config").json()
    assert cfg["labels"] == ["shape", "ring"]
    assert cfg["model"] == "demo"
    assert Path(cfg["output_dir"]) == (folder / "annotations").resolve()


def test_listing_has_images_only_inside_the_folder(app):
    with client(app) as c:
        data = c.get("/api/images").json()
    names = [i["name"] for i in data["images"]]
    # No hidden file, text file, symlink out, symlinked folder out, or file of the output folder.
    assert names == ["link_in.png", "shapes.png", "sub/b.png"]
    assert data["total"] == 3 and data["annotated"] == 0


def test_image_is_served_as_stored(app):
    with client(app) as c:
        r = c.get("/api/image", params={"name": "sub/b.png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == SHAPES.read_bytes()


def test_tiff_and_exif_rotated_images_are_reencoded_as_the_model_sees_them(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rgb = np.asarray(Image.open(SHAPES).convert("RGB"))
    Image.fromarray(rgb).save(images / "a.tif")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": browsers would turn it, the model does not
    Image.fromarray(rgb).save(images / "b.jpg", exif=exif, quality=95)
    with client(make_app(images)) as c:
        for name in ("a.tif", "b.jpg"):
            r = c.get("/api/image", params={"name": name})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), read_image(images / name))


# --- refusals -----------------------------------------------------------------------------------

BAD_NAMES = [
    ("../outside/secret.png", 400),
    ("sub/../../outside/secret.png", 400),
    ("/etc/passwd", 400),
    (str(SHAPES), 400),
    ("C:/Windows/win.ini", 400),
    ("sub\\b.png", 400),
    (".hidden.png", 400),
    ("sub//b.png", 400),
    ("./shapes.png", 400),
    ("shapes.png\x00.txt", 400),
    ("link_out.png", 403),
    ("dir_out/secret.png", 403),
    ("annotations/inside_output.png", 403),
    ("missing.png", 404),
    ("notes.txt", 404),
]


@pytest.mark.parametrize(("name", "status"), BAD_NAMES)
def test_paths_outside_or_unknown_are_refused_everywhere(app, name, status):
    with client(app) as c:
        answers = [
            c.get("/api/image", params={"name": name}),
            c.get("/api/annotations", params={"name": name}),
            c.put("/api/annotations", params={"name": name}, json=doc_with([])),
            c.post("/api/embed", json={"name": name}),
            c.post("/api/predict", json={"name": name, "points": [[1, 1]], "point_labels": [1]}),
            c.post("/api/auto", json={"name": name}),
        ]
    for r in answers:
        assert r.status_code == status, (r.request.url, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_missing_or_repeated_name_parameter(app):
    with client(app) as c:
        assert c.get("/api/annotations").status_code == 400
        assert c.get("/api/image?name=shapes.png&name=sub/b.png").status_code == 400
        assert c.post("/api/embed", json={}).status_code == 400
        assert c.post("/api/embed", json={"name": 3}).status_code == 400


def test_url_path_traversal_does_not_escape_static(app):
    with client(app) as c:
        for url in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py"):
            r = c.get(url)
            assert r.status_code == 404, url
            assert "create_app" not in r.text


def test_oversized_bodies_are_refused_with_413(folder):
    app = make_app(folder, max_body_bytes=1000)
    big = {"name": "shapes.png", "points": [[1, 1]] * 400, "point_labels": [1] * 400}
    with client(app) as c:
        r = c.post("/api/predict", json=big)
        assert r.status_code == 413 and "larger than 1000 bytes" in r.json()["error"]

        # A chunked body (no Content-Length) is counted while it is read.
        def chunks():
            yield b'{"name": "shapes.png", "points": ['
            for _ in range(200):
                yield b"[1, 1],"
            yield b"[1, 1]]}"

        r = c.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.put("/api/annotations", params={"name": "shapes.png"}, content=b"x" * 5000)
        assert r.status_code == 413


def test_default_body_limit_is_8_mb(app):
    with client(app) as c:
        r = c.put(
            "/api/annotations",
            params={"name": "shapes.png"},
            content=b" " * (8 * 2**20 + 1),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("content", "ctype", "status", "message"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b"[1, 2]", "application/json", 400, "must be an object"),
        (b'{"name": NaN}', "application/json", 400, "malformed JSON"),
        (b"\xff\xfe", "application/json", 400, "malformed JSON"),
        (b"[" * 100000 + b"]" * 100000, "application/json", 400, "malformed JSON"),
        (b'{"name": "shapes.png"}', "text/plain", 415, "Content-Type: application/json"),
        (b'{"name": "shapes.png"}', "", 415, "Content-Type"),
    ],
)
def test_malformed_bodies_get_clear_4xx(app, content, ctype, status, message):
    headers = {"content-type": ctype} if ctype else {}
    with client(app) as c:
        for method, url in (("POST", "/api/predict"), ("PUT", "/api/annotations?name=shapes.png")):
            r = c.request(method, url, content=content, headers=headers)
            assert r.status_code == status
            assert message in r.json()["error"]


BAD_PROMPTS = [
    ({}, "at least one point or a box"),
    ({"points": [[10, 10]]}, "1 points but 0 point_labels"),
    ({"points": [[10, 10]], "point_labels": [2]}, "point_labels[0]"),
    ({"points": [[10, 10]], "point_labels": [True]}, "point_labels[0]"),
    ({"points": [10, 10], "point_labels": [1, 1]}, "points[0] must be an [x, y] pair"),
    ({"points": [[10, 10, 1]], "point_labels": [1]}, "points[0] must be an [x, y] pair"),
    ({"points": [["a", 10]], "point_labels": [1]}, "finite number"),
    ({"points": [[300, 10]], "point_labels": [1]}, "outside the 256x256 image"),
    ({"points": [[-1, 10]], "point_labels": [1]}, "outside"),
    ({"points": "10,10", "point_labels": [1]}, "must be a list"),
    ({"points": [[1, 1]] * 65, "point_labels": [1] * 65}, "at most 64 points"),
    ({"box": [1, 2, 3]}, "box must be [x1, y1, x2, y2]"),
    ({"box": [50, 50, 10, 10]}, "0 <= x1 <= x2"),
    ({"box": [0, 0, 10, 1e9]}, "0 <= x1 <= x2"),
    ({"box": {"x": 1}}, "box must be"),
    ({"box": [0, 0, 10, 10], "multimask": "yes"}, "multimask must be true or false"),
]


@pytest.mark.parametrize(("body", "message"), BAD_PROMPTS)
def test_bad_prompt_shapes_are_400(app, body, message):
    with client(app) as c:
        r = c.post("/api/predict", json={"name": "shapes.png", **body})
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_unknown_routes_and_methods_are_json(app):
    with client(app) as c:
        assert c.get("/api/nope").json() == {"error": "not found"}
        r = c.delete("/api/annotations", params={"name": "shapes.png"})
        assert r.status_code == 405 and r.json() == {"error": "method not allowed"}


def test_foreign_host_and_cross_origin_writes_are_refused(app):
    with client(app) as c:
        r = c.get("/api/config", headers={"host": "evil.example:80"})
        assert r.status_code == 400 and "refused" in r.json()["error"]
        r = c.put(
            "/api/annotations",
            params={"name": "shapes.png"},
            json=doc_with([]),
            headers={"origin": "http://evil.example"},
        )
        assert r.status_code == 403 and r.json() == {"error": "cross-origin request refused"}
        r = c.put("/api/annotations", params={"name": "shapes.png"}, json=doc_with([]), headers={"origin": BASE})
        assert r.status_code == 200
        assert c.get("/api/config", headers={"host": "localhost:8765"}).status_code == 200


def test_unreadable_image_is_422(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with client(make_app(folder)) as c:
        for r in (
            c.get("/api/annotations", params={"name": "broken.png"}),
            c.post("/api/embed", json={"name": "broken.png"}),
            c.get("/api/image", params={"name": "broken.png"}),
        ):
            assert r.status_code == 422 and "cannot read image" in r.json()["error"]


def test_output_folder_must_not_hold_the_images(folder):
    for out in (folder, folder.parent):
        with pytest.raises(ValueError, match="must not be the images folder"):
            create_app(folder, out, model=demo_model())


# --- predictions --------------------------------------------------------------------------------


def test_predict_equals_the_library_predictor(app, folder):
    prompts = {"points": [PENTAGON, [40.0, 40.0]], "point_labels": [1, 0], "box": None, "multimask": True}
    box_prompts = {"points": [], "point_labels": [], "box": TRIANGLE_BOX, "multimask": False}
    with client(app) as c:
        r = c.post("/api/predict", json={"name": "shapes.png", **prompts}).json()
        rb = c.post("/api/predict", json={"name": "shapes.png", **box_prompts}).json()
    assert len(r["masks"]) == 3 and len(rb["masks"]) == 1
    for k, m in enumerate(r["masks"]):
        ref = reference_mask(folder / "shapes.png", {**prompts, "mask_index": k})
        assert iou(decode(m["segmentation"]), ref) == 1.0
        assert m["area"] == int(ref.sum())
    assert r["best"] == int(np.argmax([m["score"] for m in r["masks"]]))
    ref = reference_mask(folder / "shapes.png", {**box_prompts, "mask_index": 0})
    assert iou(decode(rb["masks"][0]["segmentation"]), ref) == 1.0
    # The pentagon: a mask well inside the image, around the clicked point.
    best = decode(r["masks"][r["best"]]["segmentation"])
    assert best[75, 125] and 3000 < best.sum() < 20000


def test_segment_everything_returns_valid_proposals(app):
    with client(app) as c:
        r = c.post(
            "/api/auto",
            json={"name": "shapes.png", "points_per_side": 8, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5},
        )
        assert r.status_code == 200
        proposals = r.json()["proposals"]
        assert proposals, "the demo model finds the shapes"
        areas = [p["area"] for p in proposals]
        assert areas == sorted(areas, reverse=True)
        for p in proposals:
            m = decode(rle.check(p["segmentation"], (256, 256)))
            assert m.sum() == p["area"] and 0 <= p["predicted_iou"] <= 1.5
        bad_settings = [{"points_per_side": 1000}, {"points_per_side": 8.5}, {"pred_iou_thresh": 2}]
        for bad in [*bad_settings, {"stability_score_thresh": "x"}]:
            r = c.post("/api/auto", json={"name": "shapes.png", **bad})
            assert r.status_code == 400 and r.json()["error"]


# --- saving and restoring -----------------------------------------------------------------------


def test_save_writes_coco_json_and_a_new_app_restores_it(folder):
    with client(make_app(folder)) as c:
        pred = c.post("/api/predict", json={"name": "sub/b.png", "points": [PENTAGON], "point_labels": [1]}).json()
        best = pred["masks"][pred["best"]]
        objects = [
            make_object(best["segmentation"], 1, score=best["score"]),
            make_object(
                square_rle(),
                7,
                label="ring",
                name="my square",
                hidden=True,
                source="manual",
                edited=True,
                score=None,
                prompts={"points": [], "point_labels": [], "box": None},
            ),
        ]
        r = c.put("/api/annotations", params={"name": "sub/b.png"}, json=doc_with(objects, done=True))
        assert r.status_code == 200 and r.json() == {"revision": 1, "objects": 2, "done": True}
        listing = c.get("/api/images").json()
        assert listing["annotated"] == 1
        assert {i["name"]: i["objects"] for i in listing["images"]}["sub/b.png"] == 2

    saved = folder / "annotations" / "sub" / "b.png.json"
    assert [p.name for p in saved.parent.iterdir()] == ["b.png.json"]  # no temporary file left
    coco = COCO(str(saved))  # a valid COCO file
    assert coco.imgs[1]["file_name"] == "sub/b.png"
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a["name"] for a in anns} == {"obj 1", "my square"}
    square = next(a for a in anns if a["id"] == 7)
    assert square["bbox"] == [20.0, 10.0, 30.0, 30.0] and square["area"] == 900
    assert coco.cats[square["category_id"]]["name"] == "ring"
    np.testing.assert_array_equal(coco.annToMask(square).astype(bool), decode(square_rle()))

    # A fresh app (a restarted server) restores everything.
    with client(make_app(folder)) as c:
        doc = c.get("/api/annotations", params={"name": "sub/b.png"}).json()
    assert doc["revision"] == 1 and doc["done"] is True and (doc["height"], doc["width"]) == (256, 256)
    by_id = {o["id"]: o for o in doc["objects"]}
    assert by_id[1]["segmentation"] == best["segmentation"]
    assert by_id[1]["prompts"] == {
        "points": [PENTAGON],
        "point_labels": [1],
        "box": None,
        "multimask": True,
        "mask_index": 0,
    }
    assert by_id[7]["hidden"] is True and by_id[7]["label"] == "ring" and by_id[7]["edited"] is True


def test_stale_revision_is_409_and_keeps_the_file(app, folder):
    with client(app) as c:
        url = "/api/annotations?name=shapes.png"
        assert c.put(url, json=doc_with([make_object(square_rle())])).json()["revision"] == 1
        before = (folder / "annotations" / "shapes.png.json").read_bytes()
        r = c.put(url, json=doc_with([], revision=0))
        assert r.status_code == 409 and "reload" in r.json()["error"]
        assert (folder / "annotations" / "shapes.png.json").read_bytes() == before
        assert c.put(url, json=doc_with([], revision=1)).json() == {"revision": 2, "objects": 0, "done": False}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(segmentation={"size": [256, 256], "counts": "garbage!!"}), "segmentation"),
        (lambda o: o.update(segmentation={"size": [256, 256], "counts": "0"}), "cover the 256x256 image"),
        (lambda o: o.update(segmentation=square_rle(h=100)), "does not match the image size"),
        (lambda o: o.update(segmentation={"size": [256, 256], "counts": [65536]}), "compressed RLE string"),
        (lambda o: o.update(segmentation=None), "COCO RLE object"),
        (lambda o: o.update(id="1"), "id must be an integer"),
        (lambda o: o.update(label=""), "label must be a non-empty string"),
        (lambda o: o.update(name="x" * 300), "name must be a string of at most 200"),
        (lambda o: o.update(hidden="no"), "hidden must be true or false"),
        (lambda o: o.update(source="magic"), "source must be one of"),
        (lambda o: o.update(score=float("inf")), "malformed JSON"),
        (lambda o: o["prompts"].update(mask_index=3), "mask_index"),
        (lambda o: o["prompts"].update(points=[[1000, 1]]), "outside"),
    ],
)
def test_bad_documents_are_400(app, folder, mutate, message):
    obj = make_object(square_rle())
    mutate(obj)
    with client(app) as c:
        body = json.dumps(doc_with([obj]), allow_nan=True)
        r = c.put("/api/annotations?name=shapes.png", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert not (folder / "annotations" / "shapes.png.json").exists()


def test_document_level_checks(app):
    with client(app) as c:
        url = "/api/annotations?name=shapes.png"
        dup = [make_object(square_rle(), 1), make_object(square_rle(), 1)]
        assert "unique" in c.put(url, json=doc_with(dup)).json()["error"]
        assert "revision" in c.put(url, json={"objects": []}).json()["error"]
        assert "objects must be a list" in c.put(url, json={"revision": 0, "objects": {}}).json()["error"]


def test_a_failed_write_leaves_the_previous_file(app, folder, monkeypatch):
    url = "/api/annotations?name=shapes.png"
    with client(app) as c:
        assert c.put(url, json=doc_with([make_object(square_rle())])).status_code == 200
        before = (folder / "annotations" / "shapes.png.json").read_bytes()

        def broken_replace(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("sam_jax.apps.annotate.paths.os.replace", broken_replace)
        r = c.put(url, json=doc_with([], revision=1))
        assert r.status_code == 500 and "No space left" in r.json()["error"]
    assert (folder / "annotations" / "shapes.png.json").read_bytes() == before
    assert not [p for p in (folder / "annotations").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_annotation_file_is_reported_not_overwritten(app, folder):
    path = folder / "annotations" / "shapes.png.json"
    path.write_text("{ half a file")
    with client(app) as c:
        r = c.get("/api/annotations", params={"name": "shapes.png"})
        assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
        r = c.put("/api/annotations", params={"name": "shapes.png"}, json=doc_with([]))
        assert r.status_code == 422
        assert c.get("/api/images").status_code == 200
    assert path.read_text() == "{ half a file"


def test_symlink_in_the_output_folder_is_not_written_through(app, folder, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    (folder / "annotations" / "shapes.png.json").symlink_to(target)
    (folder / "annotations" / "sub").symlink_to(tmp_path, target_is_directory=True)
    with client(app) as c:
        r = c.put("/api/annotations", params={"name": "shapes.png"}, json=doc_with([]))
        assert r.status_code == 403
        r = c.put("/api/annotations", params={"name": "sub/b.png"}, json=doc_with([]))
        assert r.status_code == 403
    assert target.read_text() == "keep" and not (tmp_path / "b.png.json").exists()


def test_save_png_writes_and_removes_mask_files(folder):
    with client(make_app(folder, save_png=True)) as c:
        url = "/api/annotations?name=sub/b.png"
        objects = [make_object(square_rle(), 1), make_object(square_rle(x0=100), 2)]
        assert c.put(url, json=doc_with(objects)).status_code == 200
        masks = folder / "annotations" / "sub" / "b.png.masks"
        assert sorted(p.name for p in masks.iterdir()) == ["1.png", "2.png"]
        np.testing.assert_array_equal(np.asarray(Image.open(masks / "2.png")) > 0, decode(square_rle(x0=100)))
        assert c.put(url, json=doc_with(objects[:1], revision=1)).status_code == 200
        assert sorted(p.name for p in masks.iterdir()) == ["1.png"]


# --- export -------------------------------------------------------------------------------------


def _annotate_two_images(c: TestClient) -> None:
    a = [make_object(square_rle(), 3, label="ring"), make_object(square_rle(x0=150), 4, label="shape")]
    b = [make_object(square_rle(y0=100), 1, label="extra label")]
    assert c.put("/api/annotations?name=shapes.png", json=doc_with(a)).status_code == 200
    assert c.put("/api/annotations?name=sub/b.png", json=doc_with(b)).status_code == 200


def test_export_is_a_valid_coco_dataset(app, folder, tmp_path):
    with client(app) as c:
        _annotate_two_images(c)
        r = c.get("/api/export")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        path = tmp_path / "export.json"
        path.write_bytes(r.content)
        written = c.post("/api/export").json()
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["shape", "ring", "extra label"]
    assert sorted(i["file_name"] for i in coco.imgs.values()) == ["link_in.png", "shapes.png", "sub/b.png"]
    assert sorted(coco.anns) == [1, 2, 3]
    for ann in coco.anns.values():
        m = coco.annToMask(ann)
        assert ann["area"] == m.sum() and ann["iscrowd"] == 0
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    img_b = next(i for i in coco.imgs.values() if i["file_name"] == "sub/b.png")
    (ann_b,) = coco.loadAnns(coco.getAnnIds(imgIds=[img_b["id"]]))
    assert coco.cats[ann_b["category_id"]]["name"] == "extra label"
    assert written == {
        "path": str((folder / "annotations" / "coco.json").resolve()),
        "images": 3,
        "categories": 3,
        "annotations": 3,
    }
    assert COCO(written["path"]).getAnnIds() == [1, 2, 3]


def test_annotate_export_command(app, folder, tmp_path, capsys):
    with client(app) as c:
        _annotate_two_images(c)
    out = tmp_path / "dataset" / "coco.json"
    argv = ["annotate-export", str(folder), str(out), "--labels", "ring,shape", "--annotated-only"]
    assert annotate_cli.main(argv) == 0
    assert f"{out}: 2 images, 3 annotations, 3 categories" in capsys.readouterr().out
    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["ring", "shape", "extra label"]
    assert annotate_cli.main(["annotate-export", str(tmp_path / "nowhere"), str(out)]) == 2
    assert "error:" in capsys.readouterr().err


# --- the model: embedding cache, prefetch, serialisation ----------------------------------------


def test_embedding_is_computed_once_and_reused_from_disk(folder):
    app = make_app(folder)
    engine = app.state.annotator.engine
    with client(app) as c:
        assert c.post("/api/embed", json={"name": "shapes.png"}).json()["embedding"] == "computed"
        for _ in range(2):
            c.post("/api/predict", json={"name": "shapes.png", "points": [PENTAGON], "point_labels": [1]})
        assert c.post("/api/embed", json={"name": "shapes.png"}).json()["embedding"] == "memory"
        # sub/b.png and link_in.png hold the same bytes: same cache key, no new encoding.
        assert c.post("/api/embed", json={"name": "sub/b.png"}).json()["embedding"] == "memory"
        first = c.post("/api/predict", json={"name": "shapes.png", "points": [PENTAGON], "point_labels": [1]}).json()
        assert c.get("/api/status").json()["stats"]["encoded"] == 1
    assert engine.stats["encoded"] == 1 and engine.stats["decodes"] == 3
    cache = folder / "annotations" / ".cache" / "embeddings"
    files = list(cache.glob("*.npz"))
    assert len(files) == 1

    # A second app instance (a restarted server) on the same folder reads the disk cache.
    app2 = make_app(folder)
    with client(app2) as c:
        assert c.post("/api/embed", json={"name": "shapes.png"}).json()["embedding"] == "disk"
        again = c.post("/api/predict", json={"name": "shapes.png", "points": [PENTAGON], "point_labels": [1]}).json()
    assert app2.state.annotator.engine.stats["encoded"] == 0
    assert app2.state.annotator.engine.stats["disk_hits"] == 1
    assert again["masks"] == first["masks"]


def test_corrupt_cache_file_is_recomputed(folder):
    app = make_app(folder)
    with client(app) as c:
        c.post("/api/embed", json={"name": "shapes.png"})
    (cache_file,) = (folder / "annotations" / ".cache" / "embeddings").glob("*.npz")
    cache_file.write_bytes(b"PK\x03\x04 truncated")
    app2 = make_app(folder)
    with client(app2) as c:
        assert c.post("/api/embed", json={"name": "shapes.png"}).json()["embedding"] == "computed"
    assert app2.state.annotator.engine.stats["encoded"] == 1
    with np.load(cache_file) as f:  # rewritten, valid
        assert "features/image_embed" in f.files


def test_next_image_is_prefetched_in_the_background(tmp_path):
    images = tmp_path / "images"
    make_images(images, ("a.png",))
    rgb = np.asarray(Image.open(SHAPES).convert("RGB"))
    Image.fromarray(rgb[:, ::-1].copy()).save(images / "b.png")  # different bytes: its own embedding
    app = make_app(images, prefetch=True)
    engine = app.state.annotator.engine
    with client(app) as c:
        r = c.post("/api/embed", json={"name": "a.png"}).json()
        assert r["prefetch"] == "b.png"
        deadline = time.time() + 60
        while engine.stats["prefetched"] == 0 or engine.stats["encoded"] < 2 or engine.busy():
            assert time.time() < deadline, "prefetch did not run"
            time.sleep(0.05)
        time.sleep(0.2)
        assert c.post("/api/embed", json={"name": "b.png"}).json()["embedding"] == "memory"
    assert engine.stats["encoded"] == 2
    assert len(list((images / "annotations" / ".cache" / "embeddings").glob("*.npz"))) == 2


def test_model_identity_changes_with_the_weights(tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint_dir(), copy)
    assert model_identity(copy) == model_identity(copy)
    before = model_identity(copy)
    some_file = next(p for p in (copy / "params").rglob("*") if p.is_file())
    os.utime(some_file, ns=(1, 1))
    assert model_identity(copy) != before


def test_model_calls_are_serialised_and_do_not_block_the_event_loop(folder):
    app = make_app(folder)
    engine = app.state.annotator.engine
    active, overlap = [0], [False]
    original = engine._predict

    def tracked(*args):
        active[0] += 1
        overlap[0] |= active[0] > 1
        try:
            time.sleep(0.2)  # a slow model call
            return original(*args)
        finally:
            active[0] -= 1

    engine._predict = tracked

    async def scenario() -> tuple[list[httpx.Response], float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as ac:
            body = {"name": "shapes.png", "points": [PENTAGON], "point_labels": [1]}
            predictions = [asyncio.create_task(ac.post("/api/predict", json=body)) for _ in range(4)]
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            config = await ac.get("/api/config")  # answered while the model is busy
            waited = time.perf_counter() - start
            assert config.status_code == 200
            return await asyncio.gather(*predictions), waited

    responses, waited = asyncio.run(scenario())
    assert waited < 0.5
    assert not overlap[0]
    assert all(r.status_code == 200 for r in responses)
    assert len({json.dumps(r.json()["masks"]) for r in responses}) == 1
    assert engine.stats["encoded"] == 1 and engine.stats["decodes"] == 4


# --- command line -------------------------------------------------------------------------------


def test_remote_host_needs_allow_remote(folder, capsys):
    assert annotate_cli.main(["annotate", str(folder), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert annotate_cli.is_local("127.0.0.1") and annotate_cli.is_local("::1") and annotate_cli.is_local("localhost")
    assert not annotate_cli.is_local("0.0.0.0") and not annotate_cli.is_local("192.168.1.5")


def test_annotate_command_serves_and_exits_130_on_ctrl_c(folder):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "sam_jax.apps.annotate.cli",
        "annotate",
        str(folder),
        "--port",
        "0",
        "--labels",
        "cat, dog",
        "--labels",
        "bird",
        "--no-warmup",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        while not any("open http" in line for line in lines):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.1)
        url = re.search(r"open (http://\S+)", "".join(lines)).group(1)
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "api/config").json()["labels"] == ["cat", "dog", "bird"]
        assert httpx.get(url + "api/images").json()["total"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    err = proc.stderr.read()
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "sam-jax annotate: stopped"
    assert "Traceback" not in err
