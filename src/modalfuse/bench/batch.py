"""`modalfuse bench batch`: rows/s of the batch engines against the in-process Predictor limit.

One run measures, on the same rows and the same machine: the Predictor scoring inputs
already in memory (records parsed, image bytes read: the limit a file-to-file engine can
approach), the model alone on pre-decoded features (ONNX Runtime or LightGBM), the local
engine (`batch.predict_file`, file to file) and the Ray engine (file to Parquet folder;
start-up of the local Ray is timed apart). Ratios are against the Predictor limit.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from modalfuse.data.dataset import load_dataset
from modalfuse.inference.batch import load_image, predict_file
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.markdown import markdown_table
from modalfuse.progress import SILENT, ProgressReporter
from modalfuse.scale.ray_batch import RayBatchConfig, ray_predict_file

console = Console()
TARGET_LOCAL_RATIO = 0.8


def bench_input(dataset_root: Path, rows: int, out: Path) -> Path:
    """A CSV of `rows` dataset rows (cycled), without the target: what a batch user sends."""
    ds = load_dataset(dataset_root, validate=False)
    table = ds.table.drop(columns=[ds.spec.target])
    reps = -(-rows // len(table))
    big = pd.concat([table] * reps, ignore_index=True).iloc[:rows]
    big.to_csv(out, index=False)
    return out


def _best(fn, repeats: int) -> float:
    """Fastest of `repeats` runs: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_bench(bundle: Path, dataset_root: Path, rows: int = 2000, chunk_size: int = 256,
              repeats: int = 3, actors: int = 2, ray_engine: bool = True,
              reporter: ProgressReporter = SILENT) -> dict[str, Any]:
    """Time the in-process Predictor, the local batch engine and (optionally) the Ray engine on
    the same rows; each engine's rows/s is also given as a ratio to the Predictor's. Each timed
    run is a `run` step to `reporter`."""
    predictor = Predictor.from_path(bundle)
    images = dataset_root / "images"
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modalfuse-bench-") as tmp:
        work = Path(tmp)
        csv = bench_input(dataset_root, rows, work / "rows.csv")
        frame = pd.read_csv(csv)
        records = table_records(predictor.spec, frame)
        blobs = [load_image(images, n) for n in frame[predictor.spec.image_column]]
        chunks = [(records[i:i + chunk_size], blobs[i:i + chunk_size])
                  for i in range(0, rows, chunk_size)]

        def limit() -> None:
            for recs, imgs in chunks:
                predictor.predict_proba(recs, imgs)

        prepared = [p.batch for p in (predictor.prepare(r, i) for r, i in chunks) if p.batch]

        def model_only() -> None:
            for b in prepared:
                predictor.bundle.model.predict_proba(b)

        def local() -> None:
            predict_file(predictor, csv, images, work / "local.parquet", chunk_size=chunk_size)

        # Interleaved, so a burst of load elsewhere hits every engine alike.
        timings: dict[str, list[float]] = {"predictor_limit": [], "local_engine": [],
                                           "model_only": []}
        engines = {"predictor_limit": limit, "local_engine": local, "model_only": model_only}
        total, done = repeats * len(engines) + ray_engine, 0
        for r in range(repeats):
            for key, run in engines.items():
                reporter.on_step("run", f"{LABELS[key]}, repeat {r + 1}/{repeats}", done, total)
                timings[key].append(_best(run, 1))
                done += 1
        result["predictor_limit"] = {"seconds": min(timings["predictor_limit"])}
        result["model_only"] = {"seconds": min(timings["model_only"])}
        result["local_engine"] = {"seconds": min(timings["local_engine"])}
        if ray_engine:
            reporter.on_step("run", LABELS["ray_engine"], done, total)
            result.update(_bench_ray(bundle, csv, images, work, chunk_size, actors))
        reporter.on_step("run", "timed every engine", total, total)
    for v in result.values():
        v["rows_per_s"] = rows / v["seconds"]
    ref = result["predictor_limit"]["rows_per_s"]
    for v in result.values():
        v["ratio_to_limit"] = v["rows_per_s"] / ref
    return {
        "command": f"modalfuse bench batch --rows {rows} --chunk-size {chunk_size} "
                   f"--repeats {repeats} --actors {actors}" + ("" if ray_engine else " --no-ray"),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": predictor.model_version,
        "model_kind": predictor.bundle.meta.get("model", {}).get("kind"),
        "rows": rows, "chunk_size": chunk_size, "repeats": repeats, "actors": actors,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
        "target_local_ratio": TARGET_LOCAL_RATIO,
        "local_meets_target": result["local_engine"]["ratio_to_limit"] >= TARGET_LOCAL_RATIO,
        "engines": result,
    }


def _bench_ray(bundle: Path, csv: Path, images: Path, work: Path, chunk_size: int,
               actors: int) -> dict[str, dict]:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=max(1, min(actors, os.cpu_count() or 1)), include_dashboard=False,
             log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        cfg = RayBatchConfig(actors=actors, batch_size=chunk_size)
        t0 = time.perf_counter()
        ray_predict_file(bundle, str(csv), images, work / "ray", cfg)
        job = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"ray_engine": {"seconds": job},
            "ray_engine_with_startup": {"seconds": job + startup}}


LABELS = {
    "predictor_limit": "Predictor, inputs in memory (limit)",
    "model_only": "model alone, features pre-decoded",
    "local_engine": "local engine (file to file)",
    "ray_engine": "Ray engine (file to Parquet folder)",
    "ray_engine_with_startup": "Ray engine incl. local Ray start-up",
}


def to_markdown(report: dict) -> str:
    """The throughput report as markdown, saying which command produced it."""
    lines = [
        "# Batch scoring throughput",
        "",
        f"Produced by `{report['command']}` at {report['measured_at']} "
        f"(model {report['model_version']}, {report['rows']} rows, "
        f"{report['machine']['cpus']} CPUs, 1-min load average {report['machine']['load_avg_1m']:.1f}).",
        "",
        markdown_table(["engine", "seconds", "rows/s", "ratio to the Predictor limit"],
                       [[LABELS.get(key, key), f"{v['seconds']:.2f}", f"{v['rows_per_s']:.0f}",
                         f"{v['ratio_to_limit']:.2f}"] for key, v in report["engines"].items()],
                       align=[None, "right", "right", "right"]),
    ]
    verdict = "meets" if report["local_meets_target"] else "misses"
    lines += ["", f"Target: local engine ≥ {report['target_local_ratio']}× the limit; "
                  f"this run {verdict} it.", ""]
    return "\n".join(lines)

