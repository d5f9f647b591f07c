"""Hand-made hostile input: every one gets a 4xx whose message says what is wrong, never a 5xx."""

from __future__ import annotations

import base64
import io
import json
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modalfuse.config import Settings
from modalfuse.inference.predictor import Predictor
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY


@pytest.fixture(scope="module")
def client(fixture_bundle, tmp_path_factory):
    # Built like the server builds it: the Predictor takes its limits from the settings.
    predictor = Predictor.from_path(fixture_bundle.path, max_image_bytes=50_000,
                                    max_image_pixels=250_000)
    settings = Settings(data_dir=tmp_path_factory.mktemp("serve-hostile"), api_key=API_KEY,
                        max_batch_rows=4, max_image_bytes=50_000, max_image_pixels=250_000,
                        max_body_bytes=400_000, log_predictions=False)
    with TestClient(create_app(settings, predictor=predictor),
                    raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def example(client):
    return client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"][
        "examples"][0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), (200, 10, 10, 255)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb() -> bytes:
    """A valid PNG header claiming 30000 x 30000 pixels in a few hundred bytes."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def detail_text(r) -> str:
    return json.dumps(r.json()).lower()


IMAGES = {
    "corrupt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ["image"]),
    "truncated": (png(64, 64)[:60], ["image"]),
    "huge_file": (b"\x89PNG\r\n\x1a\n" + b"\0" * 60_000, ["50000"]),
    "too_many_pixels": (png(600, 600), ["pixels", "250000"]),
    "decompression_bomb": (png_bomb(), ["pixels"]),
    "not_an_image": (b"%PDF-1.4\n1 0 obj << >> endobj\n", ["image"]),
    "text": (b"hello, I am a CSV,1,2,3\n", ["image"]),
    "empty": (b"", ["empty"]),
}


@pytest.mark.parametrize("kind", list(IMAGES))
def test_bad_images_get_422_with_a_reason(client, example, kind):
    data, words = IMAGES[kind]
    r = client.post("/v1/predict", json={**example, "image_base64": b64(data)})
    assert r.status_code in (413, 422), (kind, r.status_code, r.text)
    text = detail_text(r)
    assert all(w in text for w in words), (kind, r.text)


@pytest.mark.parametrize("kind", ["corrupt", "too_many_pixels", "decompression_bomb"])
def test_bad_uploaded_images_get_4xx(client, example, kind):
    data, words = IMAGES[kind]
    r = client.post("/v1/predict/upload", files={"image": ("x.png", data, "image/png")},
                    data={"fields": json.dumps(example["fields"])})
    assert 400 <= r.status_code < 500 and all(w in detail_text(r) for w in words), r.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_inf_are_refused(client, example, literal):
    body = json.dumps(example).replace(f'"hp": {example["fields"]["hp"]}', f'"hp": {literal}')
    assert literal in body
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "hp" in r.text and ("finite" in r.text or "less than" in r.text), r.text


def test_nan_in_a_batch_row_is_that_rows_error(client, example):
    body = json.dumps([example, {**example, "fields": {**example["fields"], "hp": "__NAN__"}}])
    body = body.replace('"__NAN__"', "NaN")
    r = client.post("/v1/predict/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0]["label"] and "hp" in preds[1]["error"], preds[1]


@pytest.mark.parametrize("mutate, words", [
    (lambda e: {**e, "fields": [1, 2, 3]}, ["fields"]),
    (lambda e: {**e, "fields": {**e["fields"], "hp": [1]}}, ["hp"]),
    (lambda e: {**e, "fields": {**e["fields"], "is_legendary": "maybe"}}, ["is_legendary"]),
    (lambda e: {**e, "fields": {**e["fields"], "color": 7}}, ["color"]),
    (lambda e: {**e, "fields": {**e["fields"], "egg_groups": "Monster"}}, ["egg_groups"]),
    (lambda e: {**e, "image_base64": 12345}, ["image_base64"]),
    # Image only and fields only are scored (tests/serve/test_api_modalities.py); neither is not.
    (lambda e: {}, ["image is missing and so are the fields"]),
    (lambda e: {"fields": None, "image_base64": None}, ["send an image, the fields, or both"]),
    (lambda e: {**e, "surprise": 1}, ["surprise", "extra"]),
    (lambda e: {**e, "fields": {**e["fields"], "favourite_food": "pizza"}}, ["favourite_food"]),
    (lambda e: [e], ["dict", "object"]),
    (lambda e: "just a string", ["dict", "object"]),
])
def test_wrong_types_missing_and_unknown_fields_are_named(client, example, mutate, words):
    r = client.post("/v1/predict", json=mutate(example))
    assert r.status_code == 422, r.text
    text = detail_text(r)
    assert any(w in text for w in words), r.text


@pytest.mark.parametrize("body, ctype, words", [
    (b"{not json", "application/json", ["json"]),
    (b"", "application/json", ["body", "field required", "missing"]),
    (b"fields=1", "application/x-www-form-urlencoded", ["fields", "missing", "json"]),
    (b"\xff\xfe\x00garbage", "application/json", ["json", "decode"]),
])
def test_unparseable_bodies_are_4xx(client, body, ctype, words):
    r = client.post("/v1/predict", content=body, headers={"content-type": ctype})
    assert 400 <= r.status_code < 500, r.text
    assert any(w in detail_text(r) for w in words), r.text


def test_empty_and_oversized_batches(client, example):
    r = client.post("/v1/predict/batch", json=[])
    assert r.status_code == 422 and "empty" in r.text
    r = client.post("/v1/predict/batch", json=[example] * 5)
    assert r.status_code == 413 and "limit is 4" in r.text
    r = client.post("/v1/predict/batch", json={"rows": [example]})
    assert r.status_code == 422 and "list" in r.text


def test_body_over_the_limit_is_413_before_it_is_read(client, example):
    big = {**example, "image_base64": "A" * 500_000}
    r = client.post("/v1/predict", json=big)
    assert r.status_code == 413 and "limit is 400000" in r.text

    def chunks():  # no content-length: the limit is enforced while streaming
        for _ in range(50):
            yield b"x" * 10_000

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds 400000" in r.text


def test_unknown_routes_and_methods_are_4xx(client):
    assert client.get("/v1/nothing-here").status_code == 404
    assert client.put("/v1/predict", json={}).status_code == 405
    assert client.get("/../../etc/passwd").status_code == 404
