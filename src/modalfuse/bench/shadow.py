"""`modalfuse bench shadow`: what a shadow release costs the requests it shadows.

One API serves the bundle; /v1/predict is driven at each concurrency level twice, without a
shadow and then with one (`POST /admin/shadow`, the same bundle or a second one as the
challenger), and the p50 and p99 of each are compared. The target: a shadow adds at most 10 %
to p50. The API runs as a real server (uvicorn in a subprocess, load over keep-alive
connections, as `bench serve`) or in-process (a TestClient, no sockets; quicker, noisier).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modalfuse.bench.servers import (
    LevelResult,
    LevelSteps,
    drive,
    drive_calls,
    free_port,
    running,
)
from modalfuse.config import Settings
from modalfuse.inference.bundle import load_bundle
from modalfuse.inference.predictor import Predictor
from modalfuse.markdown import markdown_table
from modalfuse.progress import SILENT, ProgressReporter
from modalfuse.serve.app import create_app

# The target: p50 with a shadow over p50 without, at every level.
MAX_P50_RATIO = 1.10
BENCH_KEY = "bench-shadow-key-0123456789"


@dataclass
class ShadowLevel:
    """Latency of /v1/predict at one concurrency level, with or without a shadow."""

    concurrency: int
    shadow: bool
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float


def shadow_level(r: LevelResult, shadow: bool) -> ShadowLevel:
    """One level of /v1/predict as measured, marked with or without a shadow."""
    return ShadowLevel(r.concurrency, shadow, r.requests, r.errors, r.p50_ms, r.p99_ms,
                       r.throughput_rps)


def run_shadow_bench(bundle: Path, challenger: Path | None = None, requests: int = 300,
                     warmup: int = 20, concurrencies: tuple[int, ...] = (1, 8),
                     server: bool = True,
                     reporter: ProgressReporter = SILENT) -> dict[str, Any]:
    """p50/p99 of /v1/predict without and with a shadow of `challenger` (default: the same
    bundle), at each concurrency, on a real server or in-process; each level a `level` step."""
    predictor = Predictor.from_path(bundle)
    example = predictor.bundle.meta.get("example")
    if not example:
        raise ValueError(f"bundle {bundle} has no example request (bundle.json 'example'); "
                         "retrain it with this modalfuse")
    challenger = challenger or bundle
    body = json.dumps(example).encode()
    results: list[ShadowLevel] = []
    shadow_state: dict[str, Any] = {}
    steps = LevelSteps(2 * len(concurrencies), reporter)
    with tempfile.TemporaryDirectory(prefix="modalfuse-bench-shadow-") as tmp:
        runner = _server_levels if server else _in_process_levels
        runner(Path(tmp), bundle, challenger, body, requests, warmup, concurrencies, results,
               shadow_state, steps)
    return shadow_result(results, shadow_state, predictor, bundle, challenger, server)


def _with_and_without(measure: Callable[[int, int, int, bool], ShadowLevel],
                      admin: Callable[[str, str, dict | None], dict], challenger: Path,
                      requests: int, warmup: int, concurrencies: tuple[int, ...],
                      results: list[ShadowLevel], shadow_state: dict[str, Any],
                      steps: LevelSteps) -> None:
    for c in concurrencies:
        steps.doing(f"c={c} without a shadow, {requests} requests")
        results.append(measure(c, requests, warmup, False))
        steps.measured(f"c={c} without a shadow, {requests} requests")
        admin("POST", "/admin/shadow", {"bundle": str(challenger)})
        steps.doing(f"c={c} with a shadow, {requests} requests")
        results.append(measure(c, requests, warmup, True))
        state = admin("GET", "/admin/releases", None)["shadow"] or {}
        deadline = time.monotonic() + 60  # let the shadow catch up before it is counted
        while state.get("pending") and time.monotonic() < deadline:
            time.sleep(0.05)
            state = admin("GET", "/admin/releases", None)["shadow"] or {}
        shadow_state[str(c)] = {k: state.get(k) for k in ("scored", "dropped", "agreement")}
        admin("DELETE", "/admin/shadow", None)
        steps.measured(f"c={c} with a shadow, {requests} requests")


def _server_levels(tmp: Path, bundle: Path, challenger: Path, body: bytes, requests: int,
                   warmup: int, concurrencies: tuple[int, ...], results: list[ShadowLevel],
                   shadow_state: dict[str, Any], steps: LevelSteps) -> None:
    port = free_port()
    env = {**os.environ, "MODALFUSE_BUNDLE": str(bundle), "MODALFUSE_DATA_DIR": str(tmp / "data"),
           "MODALFUSE_LOG_LEVEL": "WARNING", "MODALFUSE_API_KEY": BENCH_KEY}
    for name in ("MODALFUSE_SHADOW_MODEL_URI", "MODALFUSE_SHADOW_BUNDLE",
                 "MODALFUSE_CANARY_SHARE"):
        env.pop(name, None)  # the benchmark sets the shadow itself, and no canary
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "modalfuse.serve.asgi:app",
           "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]

    def admin(method: str, path: str, payload: dict | None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request(method, path, json.dumps(payload) if payload is not None else None,
                         {"X-API-Key": BENCH_KEY, "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {data[:500]!r}")
        return json.loads(data)

    def measure(c: int, n: int, w: int, shadow: bool) -> ShadowLevel:
        return shadow_level(drive(port, "/v1/predict", body, c, n, w, "modalfuse API",
                                  lambda status, data: status == 200), shadow)

    steps.doing("starting the API (uvicorn, 1 process)")
    with running(cmd, env, port, "/health", tmp / "api.log"):
        _with_and_without(measure, admin, challenger, requests, warmup, concurrencies, results,
                          shadow_state, steps)


def _in_process_levels(tmp: Path, bundle: Path, challenger: Path, body: bytes, requests: int,
                       warmup: int, concurrencies: tuple[int, ...], results: list[ShadowLevel],
                       shadow_state: dict[str, Any], steps: LevelSteps) -> None:
    from fastapi.testclient import TestClient  # httpx-backed; a test-time dependency

    settings = Settings(data_dir=tmp / "data", api_key=BENCH_KEY, bundle=bundle, model_uri=None,
                        shadow_model_uri=None, shadow_bundle=None, canary_share=0.0)
    headers = {"Content-Type": "application/json"}
    with TestClient(create_app(settings)) as client:
        def admin(method: str, path: str, payload: dict | None) -> dict:
            r = client.request(method, path, json=payload, headers={"X-API-Key": BENCH_KEY})
            r.raise_for_status()
            return r.json()

        def post() -> int:
            return client.post("/v1/predict", content=body, headers=headers).status_code

        def measure(c: int, n: int, w: int, shadow: bool) -> ShadowLevel:
            return shadow_level(drive_calls(lambda: nullcontext(post), lambda status: status == 200,
                                            c, n, w, "modalfuse API"), shadow)

        _with_and_without(measure, admin, challenger, requests, warmup, concurrencies, results,
                          shadow_state, steps)


def shadow_result(results: list[ShadowLevel], shadow_state: dict[str, Any],
                  predictor: Predictor, bundle: Path, challenger: Path,
                  server: bool) -> dict[str, Any]:
    """The benchmark's result: every level, the p50 ratio per concurrency and the target."""
    ratios: dict[str, dict[str, float]] = {}
    for c in sorted({r.concurrency for r in results}):
        off = next(r for r in results if r.concurrency == c and not r.shadow)
        on = next(r for r in results if r.concurrency == c and r.shadow)
        ratios[str(c)] = {"p50": on.p50_ms / off.p50_ms, "p99": on.p99_ms / off.p99_ms}
    met = all(v["p50"] <= MAX_P50_RATIO for v in ratios.values())
    return {
        "command": "modalfuse bench shadow" + ("" if server else " --in-process"),
        "mode": "server" if server else "in-process",
        "model_version": predictor.model_version,
        "bundle": bundle.name, "challenger": challenger.name,
        "challenger_version": load_bundle(challenger).model_version,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(terse=True)},
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "shadow": shadow_state,
        "target": {"max_p50_ratio": MAX_P50_RATIO, "met": met},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def shadow_bench_markdown(res: dict[str, Any]) -> str:
    """The shadow benchmark as Markdown: latency with and without, ratios, the target."""
    lines = [
        f"Measured by `{res['command']}` on {res['created_at']} ({res['machine']['cpus']} CPUs, "
        f"Python {res['machine']['python']}, {res['mode']}), champion `{res['model_version']}`, "
        f"challenger bundle `{res['challenger']}`.", "",
        markdown_table(["c", "shadow", "requests", "errors", "p50 ms", "p99 ms", "req/s"],
                       [[r["concurrency"], "on" if r["shadow"] else "off", r["requests"],
                         r["errors"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['throughput_rps']:.0f}"] for r in res["results"]]),
        "",
        markdown_table(["c", "p50 with / without", "p99 with / without", "shadow rows scored",
                        "dropped"],
                       [[c, f"{v['p50']:.3f}", f"{v['p99']:.3f}",
                         res["shadow"].get(c, {}).get("scored"),
                         res["shadow"].get(c, {}).get("dropped")]
                        for c, v in res["ratios"].items()]),
    ]
    t = res["target"]
    lines += ["", f"Target: a shadow adds at most {round((t['max_p50_ratio'] - 1) * 100)} % to "
                  f"p50 at every level: {'met' if t['met'] else 'not met'}."]
    return "\n".join(lines) + "\n"
