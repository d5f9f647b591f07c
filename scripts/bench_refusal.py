"""Benchmark: how fast the API refuses requests that would sell a lot of CPU.

    python scripts/bench_refusal.py [--bundle PATH] [--repeat 20] [--unbounded]

Requests go to the app in process (Starlette's TestClient over ASGI: no network, no
client-side JSON encoding in the timings; bodies are serialized once, up front):

- a 256-row batch of 2000x2000 PNGs (1.02 Gpx; the budget is MODALFUSE_MAX_REQUEST_PIXELS,
  16 Mpx by default): refused with 413 from the image headers, nothing decoded;
- one PNG of a few hundred bytes that declares 30000x30000 pixels: refused with 422;
- for scale, an accepted batch at the budget (4 x 2000x2000 = 16 Mpx), decoded and scored;
- with `--unbounded`, the 256-row batch once more with the budget off: what it cost before.

Prints one table: median, p95 and max milliseconds per request, and the status codes.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from modalfuse.config import Settings
from modalfuse.inference.predictor import Predictor
from modalfuse.markdown import markdown_table
from modalfuse.serve.app import create_app


def png_2000() -> str:
    buf = io.BytesIO()
    Image.new("RGBA", (2000, 2000), (200, 10, 10, 255)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_claiming(w: int, h: int) -> str:
    """A valid PNG header declaring w x h pixels, in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()


def measure(client: TestClient, url: str, body: str, repeat: int) -> tuple[list[float], set[int]]:
    times, codes = [], set()
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.post(url, content=body, headers={"content-type": "application/json"})
        times.append((time.perf_counter() - t0) * 1000)
        codes.add(r.status_code)
    return times, codes


def row(name: str, times: list[float], codes: set[int]) -> list[object]:
    times = sorted(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return [name, len(times), sorted(codes), f"{statistics.median(times):.1f}", f"{p95:.1f}",
            f"{times[-1]:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None,
                    help="model bundle (default: the settings' bundle for pokemon)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--unbounded", action="store_true",
                    help="also time the 256-row batch once with the pixel budget off (slow)")
    args = ap.parse_args()
    bundle = args.bundle or Settings().default_bundle("pokemon")
    predictor = Predictor.from_path(bundle)
    example = predictor.bundle.meta["example"]
    big, bomb = png_2000(), png_claiming(30_000, 30_000)
    bodies = {
        "256 x 2000x2000 PNG batch (1.02 Gpx)": ("/v1/predict/batch",
                                                 json.dumps([{**example, "image_base64": big}] * 256)),
        "one PNG declaring 30000x30000": ("/v1/predict", json.dumps({**example,
                                                                     "image_base64": bomb})),
        "accepted: 4 x 2000x2000 batch (16 Mpx)": ("/v1/predict/batch",
                                                   json.dumps([{**example, "image_base64": big}] * 4)),
    }
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), log_predictions=False)
        with TestClient(create_app(settings, predictor=predictor)) as client:
            measure(client, "/v1/predict", json.dumps(example), 3)  # warm-up
            for name, (url, body) in bodies.items():
                rows.append(row(name, *measure(client, url, body, args.repeat)))
        if args.unbounded:
            off = Settings(data_dir=Path(tmp), log_predictions=False,
                           max_request_pixels=10**12)
            with TestClient(create_app(off, predictor=predictor)) as client:
                url, body = bodies["256 x 2000x2000 PNG batch (1.02 Gpx)"]
                rows.append(row("same batch, budget off", *measure(client, url, body, 1)))
    sys.stdout.write(f"bundle {predictor.model_version}; timings in process (TestClient), "
                     f"max_request_pixels {Settings().max_request_pixels}\n")
    table = markdown_table(["request", "n", "status", "median ms", "p95 ms", "max ms"], rows)
    sys.stdout.write(table + "\n")


if __name__ == "__main__":
    main()
