"""`modalfuse bench serve`: latency and throughput of the HTTP API against its peers, one run.

Three targets score the same request (the bundle's example record and image, so image
decode is included): the in-process Predictor (the limit), this API under uvicorn, and
`mlflow models serve` of the same bundle as a pyfunc (what a user would pick instead).
Servers run as subprocesses on loopback; the load comes from this process, at each
concurrency level, over keep-alive connections, for a fixed number of requests.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.inference.predictor import Predictor

# Targets of the issue this benchmark answers; the table says pass/fail against each.
TARGETS = {"p50_ms_c1": 3.0, "p99_ms_c1": 10.0, "throughput_vs_mlflow_c16": 3.0,
           "http_p50_vs_inprocess": 1.5}


@dataclass
class LevelResult:
    """Latency and throughput of one target at one concurrency level."""

    target: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float


def free_port() -> int:
    """A local TCP port free right now, for a benchmarked server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until the server answers `path` with 200; `RuntimeError` if it exits or times out."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not answer {path} in {timeout:.0f}s")


@contextmanager
def running(cmd: list[str], env: dict[str, str], port: int, health: str, log: Path):
    """Run a server command (output to `log`) while it is healthy; it is terminated on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                wait_http(port, health, proc)
            except RuntimeError as e:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{e}; {cmd[2:5]} said:\n{tail}") from None
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def drive(port: int, path: str, body: bytes, concurrency: int, n_requests: int,
          warmup: int, name: str, ok: Callable[[int, bytes], bool]) -> LevelResult:
    """n_requests POSTs spread over `concurrency` keep-alive connections; latency per request."""
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(warmup):
            conn.request("POST", path, body, headers)
            conn.getresponse().read()
        barrier.wait()
        local, bad = [], 0
        while True:
            with lock:
                nxt = next(counter, None)
            if nxt is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            local.append(time.perf_counter() - t0)
            bad += not ok(resp.status, data)
        conn.close()
        with lock:
            latencies.extend(local)
            errors += bad

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return _summary(name, concurrency, latencies, errors, wall)


def _summary(name: str, concurrency: int, latencies: list[float], errors: int,
             wall: float) -> LevelResult:
    ms = np.array(latencies) * 1000
    return LevelResult(name, concurrency, len(ms), errors, float(np.percentile(ms, 50)),
                       float(np.percentile(ms, 99)), float(ms.mean()), len(ms) / wall)


def in_process(predictor: Predictor, example: dict, n_requests: int, warmup: int) -> LevelResult:
    """The same work without HTTP: base64 decode, validation, image decode, features, model."""
    def once() -> None:
        image = base64.b64decode(example["image_base64"], validate=True)
        res = predictor.predict([example["fields"]], [image])[0]
        assert "error" not in res, res

    for _ in range(warmup):
        once()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n_requests):
        s = time.perf_counter()
        once()
        lat.append(time.perf_counter() - s)
    return _summary("in-process Predictor", 1, lat, 0, time.perf_counter() - t0)


def save_mlflow_model(bundle: Path, out: Path) -> Path:
    """Save the bundle as an MLflow pyfunc model under `out`, for `mlflow models serve` to compare."""
    import logging

    import mlflow

    from modalfuse.inference.mlflow_pyfunc import BUNDLE_ARTIFACT, BundlePyfunc
    from modalfuse.tracking.runs import pip_requirements

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    path = out / "pyfunc"
    mlflow.pyfunc.save_model(str(path), python_model=BundlePyfunc(),
                             artifacts={BUNDLE_ARTIFACT: str(bundle)},
                             pip_requirements=pip_requirements())
    return path


def run_serve_bench(bundle: Path, requests_c1: int = 300, requests_c16: int = 800,
                    warmup: int = 20, include_mlflow: bool = True,
                    progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Benchmark in-process Predictor, the modalfuse API and (optionally) MLflow serving on one bundle."""
    predictor = Predictor.from_path(bundle)
    example = predictor.bundle.meta.get("example")
    if not example:
        raise ValueError(f"bundle {bundle} has no example request (bundle.json 'example'); "
                         "retrain it with this modalfuse")
    api_body = json.dumps(example).encode()
    mlflow_body = json.dumps({"dataframe_records": [
        {**example["fields"], "image_base64": example["image_base64"]}
    ]}).encode()
    results: list[LevelResult] = []
    progress("in-process Predictor")
    results.append(in_process(predictor, example, requests_c1, warmup))

    def api_ok(status: int, data: bytes) -> bool:
        return status == 200

    def mlflow_ok(status: int, data: bytes) -> bool:
        if status != 200:
            return False
        rows = json.loads(data)["predictions"]
        return not rows[0].get("error")

    with tempfile.TemporaryDirectory(prefix="modalfuse-bench-") as tmp:
        tmpdir = Path(tmp)
        # MLflow starts `uvicorn` by name: this interpreter's scripts must be on PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "MODALFUSE_BUNDLE": str(bundle),
               "MODALFUSE_DATA_DIR": str(tmpdir / "data"), "MODALFUSE_LOG_LEVEL": "WARNING"}
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "modalfuse.serve.asgi:app",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
               "--log-level", "warning"]
        progress("modalfuse API (uvicorn, 1 process)")
        with running(cmd, env, port, "/health", tmpdir / "api.log"):
            for c, n in ((1, requests_c1), (16, requests_c16)):
                results.append(drive(port, "/v1/predict", api_body, c, n, warmup,
                                     "modalfuse API", api_ok))
        if include_mlflow:
            progress("mlflow models serve (same bundle as a pyfunc)")
            model = save_mlflow_model(bundle, tmpdir)
            port = free_port()
            cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model),
                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
            with running(cmd, env, port, "/ping", tmpdir / "mlflow.log"):
                for c, n in ((1, requests_c1), (16, requests_c16)):
                    results.append(drive(port, "/invocations", mlflow_body, c, n, warmup,
                                         "mlflow models serve", mlflow_ok))
    return report(results, predictor, bundle)


def report(results: list[LevelResult], predictor: Predictor, bundle: Path) -> dict[str, Any]:
    """The benchmark result: every level, the ratios and each target check, with machine facts."""
    def get(target: str, c: int) -> LevelResult | None:
        return next((r for r in results if r.target == target and r.concurrency == c), None)

    inproc, api1, api16 = (get("in-process Predictor", 1), get("modalfuse API", 1),
                           get("modalfuse API", 16))
    ml16 = get("mlflow models serve", 16)
    assert inproc and api1 and api16
    http_ratio = api1.p50_ms / inproc.p50_ms
    vs_mlflow = api16.throughput_rps / ml16.throughput_rps if ml16 else None
    ratios = {"http_p50_vs_inprocess": http_ratio, "throughput_vs_mlflow_c16": vs_mlflow}
    checks = {
        "p50_ms_c1": (api1.p50_ms, api1.p50_ms <= TARGETS["p50_ms_c1"]),
        "p99_ms_c1": (api1.p99_ms, api1.p99_ms <= TARGETS["p99_ms_c1"]),
        "http_p50_vs_inprocess": (http_ratio, http_ratio <= TARGETS["http_p50_vs_inprocess"]),
    }
    v = vs_mlflow
    if v is not None:
        checks["throughput_vs_mlflow_c16"] = (v, v >= TARGETS["throughput_vs_mlflow_c16"])
    return {
        "command": "modalfuse bench serve",
        "model_version": predictor.model_version,
        "bundle": bundle.name,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(terse=True)},
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "targets": TARGETS,
        "checks": {k: {"value": v, "pass": ok} for k, (v, ok) in checks.items()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def to_markdown(res: dict[str, Any]) -> str:
    """The serve benchmark as Markdown: the results table and the target checks."""
    lines = [
        f"Measured by `{res['command']}` on {res['created_at']} ({res['machine']['cpus']} CPUs, "
        f"Python {res['machine']['python']}), model `{res['model_version']}`. One request = "
        "one record + its base64 PNG, so image decode is included.",
        "",
        "| target | concurrency | requests | errors | p50 ms | p99 ms | mean ms | req/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["results"]:
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | "
                     f"{r['throughput_rps']:.0f} |")
    lines += ["", "| check | target | measured | pass |", "| --- | --- | --- | --- |"]
    names = {"p50_ms_c1": ("API p50 at c=1 (ms)", "≤ {}"),
             "p99_ms_c1": ("API p99 at c=1 (ms)", "≤ {}"),
             "http_p50_vs_inprocess": ("API p50 / in-process p50 at c=1", "≤ {}×"),
             "throughput_vs_mlflow_c16": ("API req/s / MLflow req/s at c=16", "≥ {}×")}
    for key, chk in res["checks"].items():
        label, fmt = names[key]
        lines.append(f"| {label} | {fmt.format(res['targets'][key])} | {chk['value']:.2f} | "
                     f"{'yes' if chk['pass'] else 'no'} |")
    return "\n".join(lines) + "\n"
