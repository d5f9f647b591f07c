"""Where a served request's CPU goes: py-spy samples the API while it answers /v1/predict.

Starts `modalfuse serve` on a bundle (one process), drives it at concurrency 1 with the
benchmark's client, records the server with `py-spy record --gil` (only samples that hold the
GIL: the Python work a request waits for), and prints the share of samples under each part of
the request path, then the functions with the most samples of their own.

    python scripts/profile_serve.py --bundle BUNDLE [--seconds 8] [--rate 1000]

py-spy attaches to another process: it needs ptrace rights (root, or
kernel.yama.ptrace_scope=0). The shares are of sampled GIL time, not of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from rich.console import Console

from modalfuse.bench.servers import drive, free_port, running, serve_command

# Parts of the request path, by a frame that marks each (function name, file name).
PARTS = {
    "the Predictor (decode, features, models, sets, OOD)": ("Predictor.predict", "predictor.py"),
    "  its observers (prediction log, metrics)": ("Predictor._notify", "predictor.py"),
    "the route (validation, answer)": ("build_router.<locals>.predict", "predict.py"),
    "FastAPI's dependencies": ("solve_dependencies", "utils.py"),
    "the middlewares (ids, metrics, limits, errors)": ("ObservabilityMiddleware.__call__",
                                                       "metrics.py"),
    "sending the answer": ("Response.__call__", "responses.py"),
    "the access log": ("Logger.info", "__init__.py"),
    "the prediction log's writer thread": ("PredictionWriter._run", "writer.py"),
    "uvicorn's HTTP parsing": ("HttpToolsProtocol.data_received", "httptools_impl.py"),
}


def frame_key(frame: str) -> tuple[str, str]:
    """(function, file name) of a py-spy raw frame like `name (path/file.py:12)`."""
    name, _, where = frame.partition(" (")
    return name, Path(where.split(":")[0]).name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    ap.add_argument("--seconds", type=float, default=8.0, help="how long py-spy samples")
    ap.add_argument("--rate", type=int, default=1000, help="samples per second")
    ap.add_argument("--top", type=int, default=15, help="functions listed by own samples")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    body = json.dumps(json.loads((args.bundle / "bundle.json").read_text())["example"]).encode()
    with tempfile.TemporaryDirectory(prefix="modalfuse-profile-") as tmp:
        tmpdir = Path(tmp)
        port = free_port()
        env = {**os.environ, "MODALFUSE_DATA_DIR": str(tmpdir / "data")}
        env.pop("MODALFUSE_WORKERS", None)
        raw = tmpdir / "profile.txt"
        with running(serve_command(args.bundle, port), env, port, "/health", tmpdir / "api.log") as proc:
            drive(port, "/v1/predict", body, 1, 200, 20, "warm-up", lambda s, d: s == 200)
            done = threading.Event()

            def load() -> None:  # keep requests coming for as long as py-spy samples
                while not done.is_set():
                    drive(port, "/v1/predict", body, 1, 200, 0, "load", lambda s, d: s == 200)

            t = threading.Thread(target=load, daemon=True)
            t.start()
            rec = subprocess.run([spy, "record", "--pid", str(proc.pid), "--gil", "--nonblocking",
                                  "--rate", str(args.rate), "--duration", str(int(args.seconds)),
                                  "--format", "raw", "--output", str(raw)],
                                 capture_output=True, text=True)
            done.set()
            t.join(30)
        if rec.returncode != 0 or not raw.exists():
            Console(stderr=True).print(rec.stderr.strip() or "py-spy wrote no profile")
            return 1
        total, inclusive, own = 0, Counter[tuple[str, str]](), Counter[tuple[str, str]]()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            total += n
            frames = [frame_key(f) for f in stack.split(";")]
            own[frames[-1]] += n
            for key in set(frames):
                inclusive[key] += n
    out = Console(highlight=False).print
    out(f"{total} samples holding the GIL, {args.rate}/s for {args.seconds:g} s, "
          f"model bundle {args.bundle.name}")
    out("\nshare of samples under each part of the request path:")
    for label, key in PARTS.items():
        out(f"  {100 * inclusive[key] / max(total, 1):5.1f} %  {label}")
    out(f"\nfunctions with the most samples of their own (top {args.top}):")
    for (name, file), n in own.most_common(args.top):
        out(f"  {100 * n / max(total, 1):5.1f} %  {name} ({file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
