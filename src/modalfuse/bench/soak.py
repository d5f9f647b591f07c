"""`modalfuse bench soak`: the API under steady load for minutes, watched for leaks and drift.

A real `modalfuse serve` (prediction log on, jobs on, retention limits set) takes a mix of
single predictions, batches and async jobs from N client threads. Every few seconds the
server's RSS, the disk used under its data folder and the latency of the last window are
sampled. The verdicts compare the end with the start of the same run: RSS growth after
warm-up, disk within the configured limits, and p99 of `/v1/predict` in the last window
against the first. Nothing is compared with another machine or another day.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.bench.servers import free_port, running, serve_command
from modalfuse.inference.predictor import Predictor
from modalfuse.markdown import markdown_table
from modalfuse.progress import SILENT, ProgressReporter

TARGETS = {"rss_growth_pct": 10.0, "p99_end_vs_start_pct": 20.0}
API_KEY = "soak-key-0123456789abcdef"


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def _job_inputs(example: dict, image_column: str, rows: int) -> tuple[bytes, bytes]:
    """A CSV of `rows` copies of the example record and a zip with its image."""
    import base64

    import pandas as pd

    fields = {k: ("|".join(v) if isinstance(v, list) else v)
              for k, v in example["fields"].items()}
    table = pd.DataFrame([{**fields, "id": i, image_column: "img.png"} for i in range(rows)])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("img.png", base64.b64decode(example["image_base64"]))
    return table.to_csv(index=False).encode(), buf.getvalue()


def _multipart(files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "modalfusesoak" + os.urandom(8).hex()
    parts = []
    for field, (name, data) in files.items():
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                     f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                     .encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Recorder:
    """Latencies per route and status counts, read and reset window by window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.window: dict[str, list[float]] = {}
        self.statuses: dict[int, int] = {}

    def add(self, route: str, seconds: float, status: int) -> None:
        """Record one request's latency under its route and count its status."""
        with self.lock:
            self.window.setdefault(route, []).append(seconds)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def take(self) -> dict[str, list[float]]:
        """The latencies gathered since the last call, per route; starts a new window."""
        with self.lock:
            out, self.window = self.window, {}
        return out


def _client(port: int, body: bytes, batch: bytes, job: tuple[bytes, str], rec: Recorder,
            stop: threading.Event, index: int, job_every_s: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    json_h = {"Content-Type": "application/json", "Connection": "keep-alive"}
    n, next_job = 0, time.monotonic() + job_every_s * (1 + index / 4)
    while not stop.is_set():
        n += 1
        if index == 0 and time.monotonic() >= next_job:
            route, data, headers = "/v1/jobs", job[0], {"Content-Type": job[1],
                                                       "X-API-Key": API_KEY}
            next_job = time.monotonic() + job_every_s
        elif n % 5 == 0:
            route, data, headers = "/v1/predict/batch", batch, json_h
        else:
            route, data, headers = "/v1/predict", body, json_h
        t0 = time.perf_counter()
        try:
            conn.request("POST", route, data, headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            status = 599
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        rec.add(route, time.perf_counter() - t0, status)
    conn.close()


def run_soak(bundle: Path, minutes: float = 10.0, clients: int = 4, sample_s: float = 5.0,
             warmup_s: float = 30.0, batch_rows: int = 16, job_rows: int = 200,
             job_every_s: float = 20.0, prediction_log_max_mb: float = 20.0,
             job_ttl_s: float = 60.0, sweep_s: float = 15.0,
             reporter: ProgressReporter = SILENT) -> dict[str, Any]:
    """Run the soak and return its samples and verdicts (see the module docstring); each
    sample is a `second` step to `reporter` (seconds of load run of the planned ones)."""
    import psutil

    predictor = Predictor.from_path(bundle)
    example = predictor.bundle.meta.get("example")
    if not example:
        raise ValueError(f"bundle {bundle} has no example request; retrain it with this modalfuse")
    body = json.dumps(example).encode()
    batch = json.dumps([example] * batch_rows).encode()
    table, images = _job_inputs(example, predictor.spec.image_column, job_rows)
    job = _multipart({"table": ("rows.csv", table), "images": ("images.zip", images)})
    with tempfile.TemporaryDirectory(prefix="modalfuse-soak-") as tmp:
        tmpdir = Path(tmp)
        data = tmpdir / "data"
        env = {**os.environ, "MODALFUSE_DATA_DIR": str(data), "MODALFUSE_API_KEY": API_KEY,
               "MODALFUSE_PREDICTION_LOG_MAX_MB": str(prediction_log_max_mb),
               "MODALFUSE_JOB_TTL": str(job_ttl_s), "MODALFUSE_RETENTION_SWEEP_EVERY": str(sweep_s),
               "MODALFUSE_LOG_LEVEL": "WARNING"}
        port = free_port()
        with running(serve_command(bundle, port), env, port, "/health", tmpdir / "server.log") as proc:
            server = psutil.Process(proc.pid)
            rec, stop = Recorder(), threading.Event()
            threads = [threading.Thread(target=_client, daemon=True,
                                        args=(port, body, batch, job, rec, stop, i, job_every_s))
                       for i in range(clients)]
            for t in threads:
                t.start()
            samples: list[dict[str, Any]] = []
            t_start = time.monotonic()
            reporter.on_step("second", "soak: load started", 0, round(minutes * 60))
            end = t_start + minutes * 60
            while time.monotonic() < end:
                time.sleep(min(sample_s, max(0.0, end - time.monotonic())))
                window = rec.take()
                pred = np.array(window.get("/v1/predict", [])) * 1000
                samples.append({
                    "t_s": round(time.monotonic() - t_start, 1),
                    "rss_mb": server.memory_info().rss / 1e6,
                    "disk_mb": _dir_bytes(data) / 1e6,
                    "jobs_mb": _dir_bytes(data / "jobs") / 1e6,
                    "prediction_log_mb": _dir_bytes(data / "monitoring") / 1e6,
                    "requests": int(sum(len(v) for v in window.values())),
                    "predict_p50_ms": float(np.percentile(pred, 50)) if len(pred) else None,
                    "predict_p99_ms": float(np.percentile(pred, 99)) if len(pred) else None,
                })
                last = samples[-1]
                reporter.on_step("second", f"soak: RSS {last['rss_mb']:.0f} MB, disk "
                                 f"{last['disk_mb']:.1f} MB, p99 {last['predict_p99_ms'] or 0:.1f} ms",
                                 min(round(last["t_s"]), round(minutes * 60)), round(minutes * 60))
            stop.set()
            for t in threads:
                t.join(60)
    res = _verdicts(samples, rec.statuses, minutes, clients, warmup_s, prediction_log_max_mb,
                    predictor.model_version)
    res["checks"]["jobs_disk_bounded"] = _jobs_bounded(samples, job_ttl_s + 2 * sweep_s)
    res.update(job_ttl_s=job_ttl_s, sweep_s=sweep_s)
    return res


def _jobs_bounded(samples: list[dict[str, Any]], settled_s: float) -> dict[str, Any]:
    """Job files stop growing once retention runs: the last minute holds at most 1.5x what
    the minute after the first sweep could reach (plus 0.5 MB for one job in flight)."""
    ref = [s["jobs_mb"] for s in samples if settled_s <= s["t_s"] < settled_s + 60]
    end = [s["jobs_mb"] for s in samples if s["t_s"] >= samples[-1]["t_s"] - 60]
    if not ref or not end:
        return {"value": float("nan"), "pass": False, "note": "run too short to judge"}
    peak = max(end)
    return {"value": peak, "pass": peak <= 1.5 * max(ref) + 0.5}


def _verdicts(samples: list[dict[str, Any]], statuses: dict[int, int], minutes: float,
              clients: int, warmup_s: float, log_max_mb: float, model_version: str) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= warmup_s] or samples
    per_min = max(1, round(60 / max(1e-9, (samples[1]["t_s"] - samples[0]["t_s"])
                                     if len(samples) > 1 else 60)))
    first, last = after[:per_min], after[-per_min:]

    def p99(rows: list[dict[str, Any]]) -> float:
        vals = [r["predict_p99_ms"] for r in rows if r["predict_p99_ms"] is not None]
        return float(np.median(vals)) if vals else float("nan")

    rss0, rss1 = after[0]["rss_mb"], max(s["rss_mb"] for s in last)
    growth = 100 * (rss1 - rss0) / rss0
    p99_start, p99_end = p99(first), p99(last)
    p99_change = 100 * (p99_end - p99_start) / p99_start
    log_peak = max(s["prediction_log_mb"] for s in samples)
    checks = {
        "rss_growth_pct": {"value": growth, "pass": growth <= TARGETS["rss_growth_pct"]},
        "p99_end_vs_start_pct": {"value": p99_change,
                                 "pass": p99_change <= TARGETS["p99_end_vs_start_pct"]},
        # The log may pass its limit by what arrives between two prunes: 25 % slack.
        "prediction_log_within_limit": {"value": log_peak, "pass": log_peak <= 1.25 * log_max_mb},
        "no_server_errors": {"value": sum(n for s, n in statuses.items() if s >= 500),
                             "pass": not any(s >= 500 for s in statuses)},
    }
    return {
        "command": f"modalfuse bench soak --minutes {minutes:g} --clients {clients}",
        "model_version": model_version, "minutes": minutes, "clients": clients,
        "warmup_s": warmup_s, "prediction_log_max_mb": log_max_mb,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "rss_start_mb": rss0, "rss_end_mb": rss1, "p99_start_ms": p99_start,
        "p99_end_ms": p99_end, "samples": samples, "targets": TARGETS, "checks": checks,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def check_rows(res: dict[str, Any]) -> list[list[str]]:
    """[check, target, measured, pass] for each verdict of a soak result (markdown and report)."""
    names = {"rss_growth_pct": ("RSS growth after warm-up (%)", "≤ 10"),
             "p99_end_vs_start_pct": ("p99 of /v1/predict, last vs first minute (%)", "≤ +20"),
             "prediction_log_within_limit": ("prediction log peak (MB)",
                                             f"≤ {res['prediction_log_max_mb']:g} (+25 %)"),
             "no_server_errors": ("5xx answers", "0"),
             "jobs_disk_bounded": (f"job files in the last minute (MB, TTL "
                                   f"{res.get('job_ttl_s', 0):g} s)", "≤ 1.5× settled")}
    return [[*names.get(key, (key, "-")), f"{chk['value']:.2f}", "yes" if chk["pass"] else "no"]
            for key, chk in res["checks"].items()]


def to_markdown(res: dict[str, Any]) -> str:
    """The soak test as Markdown: the checks table, then RSS and p99 at start and end."""
    lines = [f"Measured by `{res['command']}` on {res['created_at']} ({res['machine']['cpus']} "
             f"CPUs, 1-min load {res['machine']['load_avg_1m']:.1f}), model "
             f"`{res['model_version']}`; statuses {res['statuses']}.", "",
             markdown_table(["check", "target", "measured", "pass"], check_rows(res))]
    lines += ["", f"RSS {res['rss_start_mb']:.0f} → {res['rss_end_mb']:.0f} MB; p99 "
                  f"{res['p99_start_ms']:.1f} → {res['p99_end_ms']:.1f} ms."]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> Path:
    """RSS, disk and p99 over the run, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in res["samples"]]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].plot(t, [s["rss_mb"] for s in res["samples"]])
    axes[0].set_ylabel("server RSS (MB)")
    axes[1].plot(t, [s["jobs_mb"] for s in res["samples"]], label="jobs")
    axes[1].plot(t, [s["prediction_log_mb"] for s in res["samples"]], label="prediction log")
    axes[1].axhline(res["prediction_log_max_mb"], ls="--", c="grey", lw=1, label="log limit")
    axes[1].set_ylabel("disk (MB)")
    axes[1].legend(fontsize=8)
    axes[2].plot(t, [s["predict_p99_ms"] for s in res["samples"]], label="p99")
    axes[2].plot(t, [s["predict_p50_ms"] for s in res["samples"]], label="p50")
    axes[2].set_ylabel("/v1/predict (ms)")
    axes[2].set_xlabel("minutes")
    axes[2].legend(fontsize=8)
    fig.suptitle(res["command"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
