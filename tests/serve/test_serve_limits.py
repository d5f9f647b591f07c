"""The CPU budget of the API: pixels per request (413 before any decoding), per-client
rate and concurrency limits (429 with Retry-After), and `fields` nested too deeply."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import time
import zlib

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from modalfuse.config import Settings
from modalfuse.inference.predictor import PixelBudgetError
from modalfuse.serve.app import create_app
from modalfuse.serve.ratelimit import ClientLimiter, ClientRateLimit, is_limited
from prod_helpers import API_KEY


def png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), (200, 10, 10, 255)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A valid PNG header that declares w x h pixels, in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("serve-limits"), log_predictions=False)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def example(client):
    return client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"][
        "examples"][0]


@pytest.fixture(scope="module")
def big_png() -> str:
    """One 2000 x 2000 PNG (4 Mpx, the per-image limit), made once, sent many times."""
    return base64.b64encode(png_bytes(2000, 2000)).decode()


def timed_post(client, url: str, **kwargs) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = client.post(url, **kwargs)
    return r, (time.perf_counter() - t0) * 1000


def test_a_batch_over_the_pixel_budget_is_refused_before_decoding(client, example, big_png):
    rows = [{**example, "image_base64": big_png}] * 256  # 1.02 Gpx in all; budget 16 Mpx
    body = json.dumps(rows)
    r, ms = timed_post(client, "/v1/predict/batch", content=body,
                       headers={"content-type": "application/json"})
    print(f"\n256 x 2000x2000 PNG batch refused in {ms:.1f} ms ({len(body)} bytes)")
    assert r.status_code == 413, r.text
    assert "1024000000 pixels" in r.text and "16000000" in r.text
    assert ms < 2000  # the benchmark (scripts/bench_refusal.py) measures it properly


def test_a_batch_inside_the_pixel_budget_is_scored(client, example, big_png):
    rows = [example, {**example, "image_base64": big_png}]  # 4 Mpx + a sprite
    r = client.post("/v1/predict/batch", json=rows)
    assert r.status_code == 200 and r.json()["errors"] == 0, r.text


def test_a_huge_declared_image_is_refused_from_its_header(client, example):
    bomb = base64.b64encode(png_claiming(30_000, 30_000)).decode()
    assert len(bomb) < 1000
    r, ms = timed_post(client, "/v1/predict", json={**example, "image_base64": bomb})
    print(f"\n30000x30000 PNG header refused in {ms:.1f} ms")
    assert r.status_code == 422 and "pixels" in r.text, r.text
    assert ms < 2000
    r = client.post("/v1/predict/batch", json=[example, {**example, "image_base64": bomb}])
    assert r.status_code == 200 and r.json()["errors"] == 1
    assert "pixels" in r.json()["predictions"][1]["error"]["image"]


def test_the_predictor_counts_pixels_from_headers(predictor):
    small, big = png_bytes(50, 50), png_claiming(2000, 1500)  # 3 Mpx each, never decoded
    rec: dict = {}
    with pytest.raises(PixelBudgetError, match="6000000 pixels in all; the limit is 5000000"):
        predictor.prepare([rec, rec], [big, big], max_total_pixels=5_000_000)
    # Images that fail their own checks are row errors and do not count (row 0, with no
    # fields, is scored from its image alone).
    prep = predictor.prepare([rec, rec], [small, b"junk"], max_total_pixels=2_600)
    assert set(prep.errors) == {1} and "image" in prep.errors[1] and prep.modes == ["image"]


def test_fields_nested_too_deeply_is_a_422(client, example):
    png = base64.b64decode(example["image_base64"])
    deep = "[" * 10_000 + "]" * 10_000
    r = client.post("/v1/predict/upload", files={"image": ("s.png", png, "image/png")},
                    data={"fields": json.dumps({**example["fields"], "hp": 0})
                          .replace('"hp": 0', f'"hp": {deep}')})
    assert r.status_code == 422 and "nested too deeply" in r.text, r.text
    r = client.post("/v1/predict/batch", content=f'[{{"fields": {{"hp": {deep}}}}}]',
                    headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


# ---- per-client limits ---------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refuses_over_the_rate_and_says_when_to_retry():
    clock = FakeClock()
    limiter = ClientLimiter(rate_per_s=2.0, burst=3, max_concurrent=0, clock=clock)
    for _ in range(3):
        assert limiter.acquire("a") is None
        limiter.release("a")
    refusal = limiter.acquire("a")
    assert refusal is not None and refusal.retry_after_s == 1 and "2 per second" in refusal.message
    assert limiter.acquire("b") is None  # another client has its own bucket
    clock.now = 0.5  # one token back
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is not None


def test_concurrency_cap_counts_requests_in_flight():
    limiter = ClientLimiter(rate_per_s=0, burst=1, max_concurrent=2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    refusal = limiter.acquire("a")
    assert refusal is not None and "2 at a time" in refusal.message
    limiter.release("a")
    assert limiter.acquire("a") is None


def test_idle_clients_are_forgotten_beyond_the_cap():
    limiter = ClientLimiter(rate_per_s=1, burst=1, max_concurrent=5, max_clients=3)
    assert limiter.acquire("busy") is None  # stays in flight: never forgotten
    for i in range(10):
        limiter.acquire(f"ip{i}")
        limiter.release(f"ip{i}")
    assert len(limiter._clients) <= 3 and "busy" in limiter._clients


@pytest.mark.parametrize("method, path, limited", [
    ("POST", "/v1/predict", True), ("POST", "/v1/predict/batch", True),
    ("POST", "/v1/predict/upload", True), ("POST", "/v1/explain", True),
    ("POST", "/v1/jobs", True), ("POST", "/ui/gradio_api/queue/join", True),
    ("GET", "/ui/", False), ("GET", "/v1/jobs/abc", False), ("GET", "/health", False),
    ("POST", "/admin/reload", False), ("POST", "/v1/predictions-elsewhere", False),
])
def test_which_requests_are_limited(method, path, limited):
    assert is_limited(method, path) is limited


def test_concurrency_limit_through_the_middleware():
    gate = asyncio.Event()
    both_in = asyncio.Event()
    entered = 0
    inner = FastAPI()

    @inner.post("/v1/predict")
    async def slow() -> dict:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await gate.wait()
        return {"ok": True}

    app = ClientRateLimit(inner, ClientLimiter(rate_per_s=0, burst=1, max_concurrent=2))

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.post("/v1/predict")) for _ in range(2)]
            await asyncio.wait_for(both_in.wait(), 10)  # both admitted and held
            third = await c.post("/v1/predict")
            assert third.headers["retry-after"] == "1", third.headers
            gate.set()
            done = [await t for t in held]
            after = await c.post("/v1/predict")
            return [third.status_code, *(d.status_code for d in done), after.status_code]

    assert asyncio.run(scenario()) == [429, 200, 200, 200]


def test_rate_limit_through_the_app(predictor, example, tmp_path):
    settings = Settings(data_dir=tmp_path, log_predictions=False, api_key=API_KEY,
                        rate_limit_per_s=0.001, rate_limit_burst=2)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        assert [c.post("/v1/predict", json=example).status_code for _ in range(2)] == [200, 200]
        r = c.post("/v1/predict/batch", json=[example])
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        assert "per second" in r.json()["detail"]
        assert c.get("/health").status_code == 200  # GETs are not counted
        # An invented key buys nothing; the server's key is a budget of its own.
        assert c.post("/v1/predict", json=example,
                      headers={"X-API-Key": "made-up"}).status_code == 429
        assert c.post("/v1/predict", json=example,
                      headers={"X-API-Key": API_KEY}).status_code == 200


def test_limits_off_when_zero(predictor, example, tmp_path):
    settings = Settings(data_dir=tmp_path, log_predictions=False, rate_limit_per_s=0,
                        max_concurrent_per_client=0)
    app = create_app(settings, predictor=predictor)
    assert not any(m.cls is ClientRateLimit for m in app.user_middleware)
