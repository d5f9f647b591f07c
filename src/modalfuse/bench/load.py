"""`modalfuse bench serve`: latency and throughput of the HTTP API against its peers, one run.

Three targets score the same request (the bundle's example record and image, so image
decode is included): the in-process Predictor (the limit), this API (`modalfuse serve
--workers N`), and `mlflow models serve -w N` of the same bundle as a pyfunc (what a user
would pick instead), for each bundle given and each number of workers. Servers run as
subprocesses on loopback; the load comes from this process, at each concurrency level, over
keep-alive connections, for a fixed number of requests. The serve image's size is the one
`make container-test` measured last (`.cache/container/serve-image.json`), when there is one.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modalfuse.bench.servers import (
    LevelResult,
    LevelSteps,
    drive,
    free_port,
    running,
    serve_command,
    summarize,
)
from modalfuse.inference.bundle import version_tag
from modalfuse.inference.predictor import Predictor
from modalfuse.markdown import markdown_table
from modalfuse.progress import SILENT, ProgressReporter

# Targets of the issue this benchmark answers; the table says pass/fail against each.
TARGETS = {"p50_ms_c1": 5.0, "p99_ms_c1": 10.0, "throughput_vs_mlflow_c16": 3.0,
           "http_p50_vs_inprocess": 1.5, "image_mb": 300.0}
IMAGE_FILE = Path(".cache/container/serve-image.json")
ROUNDS = 3  # the in-process and HTTP c=1 levels alternate this many times


def merge(parts: list[LevelResult]) -> LevelResult:
    """One level measured in several rounds, as if in one: latencies pooled, time summed."""
    first = parts[0]
    samples = [x for p in parts for x in p.samples]
    wall = sum(p.requests / p.throughput_rps for p in parts)
    out = summarize(first.target, first.concurrency, samples, sum(p.errors for p in parts), wall)
    out.model, out.workers = first.model, first.workers
    return out


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
    return summarize("in-process Predictor", 1, lat, 0, time.perf_counter() - t0)


def save_mlflow_model(bundle: Path, out: Path) -> Path:
    """Save the bundle as an MLflow pyfunc model under `out`, for `mlflow models serve` to compare."""
    import logging

    import mlflow

    from modalfuse.inference.mlflow_pyfunc import BUNDLE_ARTIFACT, BundlePyfunc
    from modalfuse.tracking.runs import pip_requirements

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per copy
    path = out / "pyfunc"
    mlflow.pyfunc.save_model(str(path), python_model=BundlePyfunc(),
                             artifacts={BUNDLE_ARTIFACT: str(bundle)},
                             pip_requirements=pip_requirements())
    return path


def run_serve_bench(bundles: Sequence[Path], workers: Sequence[int] = (1, 2),
                    requests_c1: int = 300, requests_c16: int = 800, warmup: int = 20,
                    include_mlflow: bool = True,
                    reporter: ProgressReporter = SILENT) -> dict[str, Any]:
    """Benchmark the in-process Predictor, the modalfuse API and (optionally) MLflow serving,
    for each bundle and each number of worker processes; each level is a `level` step."""
    results: list[LevelResult] = []
    models: list[dict[str, str]] = []
    steps = LevelSteps(len(bundles) * levels_per_bundle(workers, include_mlflow), reporter)
    for bundle in bundles:
        predictor = Predictor.from_path(bundle)
        version = predictor.model_version
        meta = predictor.bundle.meta
        models.append({"model_version": version,
                       "recipe": version_tag(meta["model"], meta.get("training")),
                       "bundle": Path(bundle).name})
        example = predictor.bundle.meta.get("example")
        if not example:
            raise ValueError(f"bundle {bundle} has no example request (bundle.json 'example'); "
                             "retrain it with this modalfuse")
        results += _bench_bundle(Path(bundle), predictor, example, workers, requests_c1,
                                 requests_c16, warmup, include_mlflow, steps)
    return report(results, models)


def levels_per_bundle(workers: Sequence[int], include_mlflow: bool) -> int:
    """Levels measured per bundle: at the first worker count the in-process Predictor and
    the API at c=1 in `ROUNDS` alternating rounds, then c=16; at the others c=1 and c=16;
    MLflow at c=1 and c=16 for each."""
    per_workers = [2 * ROUNDS + 1 if i == 0 else 2 for i in range(len(workers))]
    return sum(per_workers) + (2 * len(workers) if include_mlflow else 0)


def _bench_bundle(bundle: Path, predictor: Predictor, example: dict, workers: Sequence[int],
                  requests_c1: int, requests_c16: int, warmup: int, include_mlflow: bool,
                  steps: LevelSteps) -> list[LevelResult]:
    version = predictor.model_version
    api_body = json.dumps(example).encode()
    mlflow_body = json.dumps({"dataframe_records": [
        {**example["fields"], "image_base64": example["image_base64"]}
    ]}).encode()
    results: list[LevelResult] = []

    def api_ok(status: int, data: bytes) -> bool:
        return status == 200

    def mlflow_ok(status: int, data: bytes) -> bool:
        if status != 200:
            return False
        rows = json.loads(data)["predictions"]
        return not rows[0].get("error")

    def level(port: int, path: str, body: bytes, c: int, n: int, name: str, n_workers: int,
              ok: Callable[[int, bytes], bool], warm: int | None = None) -> LevelResult:
        label = f"{version}: {name}, {n_workers} worker(s), c={c}, {n} requests"
        steps.doing(label)
        r = drive(port, path, body, c, n, warmup if warm is None else warm, name, ok)
        r.model, r.workers = version, n_workers
        steps.measured(label)
        return r

    def predictor_level(n: int, warm: int) -> LevelResult:
        label = f"{version}: in-process Predictor, c=1, {n} requests"
        steps.doing(label)
        r = in_process(predictor, example, n, warm)
        steps.measured(label)
        return r

    with tempfile.TemporaryDirectory(prefix="modalfuse-bench-") as tmp:
        tmpdir = Path(tmp)
        # MLflow starts `uvicorn` by name: this interpreter's scripts must be on PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "MODALFUSE_LOG_LEVEL": "WARNING"}
        for k in ("MODALFUSE_MODEL_URI", "PROMETHEUS_MULTIPROC_DIR", "MODALFUSE_WORKERS"):
            env.pop(k, None)
        if include_mlflow:
            steps.doing(f"{version}: saving it as an MLflow model")
        model = save_mlflow_model(bundle, tmpdir) if include_mlflow else None
        for n_workers in workers:
            steps.doing(f"{version}: starting the modalfuse API ({n_workers} worker(s))")
            port = free_port()
            cmd = serve_command(bundle, port, n_workers)
            api_env = {**env, "MODALFUSE_DATA_DIR": str(tmpdir / f"data-{n_workers}")}
            with running(cmd, api_env, port, "/health", tmpdir / f"api-{n_workers}.log"):
                if n_workers == workers[0]:
                    # The ratio's two sides in alternating rounds, while the server idles
                    # between them: a machine whose load drifts shifts both alike.
                    inproc, api1 = [], []
                    for r in range(ROUNDS):
                        w = warmup if r == 0 else 5
                        inproc.append(predictor_level(requests_c1 // ROUNDS, w))
                        api1.append(level(port, "/v1/predict", api_body, 1,
                                          requests_c1 // ROUNDS, "modalfuse API", n_workers,
                                          api_ok, w))
                    results.append(merge(inproc))
                    results[-1].model = version
                    results.append(merge(api1))
                else:
                    results.append(level(port, "/v1/predict", api_body, 1, requests_c1,
                                         "modalfuse API", n_workers, api_ok))
                results.append(level(port, "/v1/predict", api_body, 16, requests_c16,
                                     "modalfuse API", n_workers, api_ok))
            if model is not None:
                steps.doing(f"{version}: starting mlflow models serve -w {n_workers}")
                port = free_port()
                cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model),
                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                       "-w", str(n_workers)]
                with running(cmd, {**env, "MODALFUSE_DATA_DIR": str(tmpdir / "data-mlflow")},
                             port, "/ping", tmpdir / f"mlflow-{n_workers}.log"):
                    for c, n in ((1, requests_c1), (16, requests_c16)):
                        results.append(level(port, "/invocations", mlflow_body, c, n,
                                             "mlflow models serve", n_workers, mlflow_ok))
    return results


def serve_image() -> dict[str, Any] | None:
    """The serve image as `make container-test` last measured it, if it has."""
    try:
        return json.loads(IMAGE_FILE.read_text())
    except (OSError, ValueError):
        return None


def report(results: list[LevelResult], models: list[dict[str, str]]) -> dict[str, Any]:
    """The benchmark result: every level, the ratios and each target check, with machine facts."""
    def get(target: str, model: str, c: int, n: int = 1) -> LevelResult | None:
        return next((r for r in results if r.target == target and r.model == model
                     and r.concurrency == c and r.workers == n), None)

    checks: list[dict[str, Any]] = []

    def check(key: str, model: str, workers: int | None, value: float, ok: bool) -> None:
        checks.append({"check": key, "model": model, "workers": workers, "value": value,
                       "target": TARGETS[key], "pass": ok})

    ratios: dict[str, dict[str, Any]] = {}
    for m in models:
        version = m["model_version"]
        inproc, api1 = get("in-process Predictor", version, 1), get("modalfuse API", version, 1)
        assert inproc and api1
        http_ratio = api1.p50_ms / inproc.p50_ms
        ratios[version] = {"http_p50_vs_inprocess": http_ratio, "throughput_vs_mlflow_c16": {}}
        check("p50_ms_c1", version, 1, api1.p50_ms, api1.p50_ms <= TARGETS["p50_ms_c1"])
        check("p99_ms_c1", version, 1, api1.p99_ms, api1.p99_ms <= TARGETS["p99_ms_c1"])
        check("http_p50_vs_inprocess", version, 1, http_ratio,
              http_ratio <= TARGETS["http_p50_vs_inprocess"])
        for n in sorted({r.workers for r in results if r.model == version
                         and r.target == "modalfuse API"}):
            api16, ml16 = get("modalfuse API", version, 16, n), get("mlflow models serve",
                                                                   version, 16, n)
            if api16 and ml16:
                v = api16.throughput_rps / ml16.throughput_rps
                ratios[version]["throughput_vs_mlflow_c16"][str(n)] = v
                check("throughput_vs_mlflow_c16", version, n, v,
                      v >= TARGETS["throughput_vs_mlflow_c16"])
    image = serve_image()
    if image is not None:
        check("image_mb", image.get("image", "serve image"), None, float(image["size_mb"]),
              float(image["size_mb"]) <= TARGETS["image_mb"])
    return {
        "command": "modalfuse bench serve",
        "model_version": models[0]["model_version"],
        "models": models,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(terse=True),
                    "load_avg_1m": os.getloadavg()[0]},
        "results": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in results],
        "ratios": ratios,
        "image": image,
        "targets": TARGETS,
        "checks": checks,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


CHECK_NAMES = {"p50_ms_c1": ("API p50 at c=1 (ms)", "≤ {}"),
               "p99_ms_c1": ("API p99 at c=1 (ms)", "≤ {}"),
               "http_p50_vs_inprocess": ("API p50 / in-process p50 at c=1", "≤ {}×"),
               "throughput_vs_mlflow_c16": ("API req/s / MLflow req/s at c=16, same workers",
                                            "≥ {}×"),
               "image_mb": ("serve image size (MB, `make container-test`)", "≤ {}")}


def check_row(chk: dict[str, Any]) -> list[str]:
    """[check, model, workers, target, measured, pass] of one serve-benchmark verdict."""
    label, fmt = CHECK_NAMES[chk["check"]]
    workers = "" if chk["workers"] is None else str(chk["workers"])
    return [label, f"`{chk['model']}`", workers, fmt.format(chk["target"]), f"{chk['value']:.2f}",
            "yes" if chk["pass"] else "no"]


def to_markdown(res: dict[str, Any]) -> str:
    """The serve benchmark as Markdown: the results table and the target checks."""
    models = ", ".join(f"`{m['model_version']}`" for m in res["models"])
    lines = [
        f"Measured by `{res['command']}` on {res['created_at']} ({res['machine']['cpus']} CPUs, "
        f"Python {res['machine']['python']}, 1-min load average "
        f"{res['machine']['load_avg_1m']:.1f}), models {models}. One request = one record + "
        "its base64 PNG, so image decode is included.",
        "",
        markdown_table(["model", "target", "workers", "concurrency", "requests", "errors",
                        "p50 ms", "p99 ms", "mean ms", "req/s"],
                       [[f"`{r['model']}`", r["target"], r["workers"], r["concurrency"],
                         r["requests"], r["errors"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['mean_ms']:.2f}", f"{r['throughput_rps']:.0f}"]
                        for r in res["results"]]),
        "",
        markdown_table(["check", "model", "workers", "target", "measured", "pass"],
                       [check_row(chk) for chk in res["checks"]]),
    ]
    return "\n".join(lines) + "\n"
