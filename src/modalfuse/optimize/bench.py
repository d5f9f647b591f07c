"""`modalfuse bench models`: every model variant through the same Predictor on the frozen test split.

Quality (accuracy, macro-F1, ECE), latency at batch 1 (whole Predictor, and the model alone
on prepared features), throughput at batch 64 and size on disk, with ratios to a baseline
measured in the same run. Timings interleave the variants round by round, so a machine that
gets busier during the run slows every variant alike instead of whichever came last.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.inference.evaluate import classification_metrics
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.models.neural import net_feeds
from modalfuse.optimize import file_size, onnx_parts
from modalfuse.progress import SILENT, ProgressReporter


@dataclass
class Variant:
    """One bundle under comparison: its Predictor and the timings and scores measured on it."""

    name: str
    path: Path
    predictor: Predictor
    single: list[float] = field(default_factory=list)  # seconds per batch-1 Predictor call
    model_single: list[float] = field(default_factory=list)  # seconds per batch-1 model call
    batch_seconds: float = 0.0
    batch_rows: int = 0
    model_batch_seconds: float = 0.0
    net_single: list[float] = field(default_factory=list)  # ONNX Runtime alone, batch 1


def parse_variant(text: str) -> tuple[str, Path]:
    """(name, bundle path) from a `NAME=BUNDLE_PATH` option."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InvalidInput(f"variant {text!r} is not NAME=BUNDLE_PATH (e.g. fp32=models/opt/fp32)")
    return name, Path(path)


def _prepared(predictor: Predictor, record: dict[str, Any], image: bytes) -> FeatureBatch:
    batch = predictor.prepare([record], [image]).batch
    if batch is None:
        raise InvalidInput("a test row failed to prepare")
    return batch


def _prepared_many(predictor: Predictor, records: list[dict[str, Any]], images: list[bytes]
                   ) -> FeatureBatch:
    batch = predictor.prepare(records, images).batch
    if batch is None:
        raise InvalidInput("test rows failed to prepare")
    return batch


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


def bench_models(variants: list[tuple[str, Path]], ds: Dataset, splits: Splits,
                 baseline: str | None = None, rounds: int = 3, batch: int = 64,
                 versus: list[tuple[str, str]] | None = None,
                 reporter: ProgressReporter = SILENT) -> dict[str, Any]:
    """Measure every variant on the test split; ratios are to `baseline` (default: the first).
    Each variant's timing pass of each round is a `pass` step to `reporter`."""
    names = [n for n, _ in variants]
    baseline = check_variants(names, baseline, versus)
    vs = [Variant(n, p, Predictor.from_path(p)) for n, p in variants]
    ids = splits.ids("test")
    table = ds.table.set_index(ds.spec.id_column).loc[ids].reset_index()
    records, images = table_records(ds.spec, table), ds.row_images(table)
    rows = {v.name: quality_row(v, table, records, images, ds.spec.target) for v in vs}
    time_variants(vs, records, images, rounds, batch, reporter)
    for v in vs:
        rows[v.name].update(timing_summary(v))
    base = rows[baseline]
    for r in rows.values():
        r.update(_ratios(r, base))
    pairs = [{"variant": a, "reference": b, **_ratios(rows[a], rows[b]),
              "macro_f1_kept": rows[a]["macro_f1"] / rows[b]["macro_f1"] if rows[b]["macro_f1"] else None}
             for a, b in versus or []]
    return {"baseline": baseline, "rounds": rounds, "batch": batch, "n_test": len(ids),
            "dataset": ds.spec.name, "dataset_version": ds.version,
            "rows": list(rows.values()), "versus": pairs}


def check_variants(names: list[str], baseline: str | None,
                   versus: list[tuple[str, str]] | None) -> str:
    """Refuse repeated names and unknown baseline/versus names; return the baseline."""
    if len(set(names)) != len(names):
        raise InvalidInput(f"variant names must be distinct, got {names}")
    baseline = baseline or names[0]
    if baseline not in names:
        raise InvalidInput(f"baseline {baseline!r} is not a variant; variants: {names}")
    for a, b in versus or []:
        if a not in names or b not in names:
            raise InvalidInput(f"--versus {a}={b}: both must be variants; variants: {names}")
    return baseline


def quality_row(v: Variant, table: pd.DataFrame, records: list, images: list,
                target: str) -> dict[str, Any]:
    """A variant's test metrics, size and parts (scoring once also warms its sessions up)."""
    proba = v.predictor.predict_proba(records, images)
    pos = {lab: i for i, lab in enumerate(v.predictor.labels)}
    y = table[target].map(pos).to_numpy()
    if np.isnan(y.astype(float)).any():
        raise InvalidInput(f"{v.name}: test labels unknown to the model")
    m = classification_metrics(proba, y.astype(int), v.predictor.labels)
    bundle = v.predictor.bundle
    return {"variant": v.name, "bundle": str(v.path), "model_version": v.predictor.model_version,
            "kind": bundle.meta["model"]["kind"],
            "how": bundle.meta.get("training", {}).get("optimized", {}).get("method", "trained"),
            "n_test": len(table), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "ece": m["ece"], "size_bytes": file_size(v.path),
            "onnx_parts": [p for p, _ in onnx_parts(bundle.model)]}


def time_variants(vs: list[Variant], records: list, images: list, rounds: int, batch: int,
                  reporter: ProgressReporter = SILENT) -> None:
    """Time every variant, interleaved round by round: one-row requests end to end, the model
    alone on ready features, the networks alone on ready arrays, and batches."""
    single_prepared = [[_prepared(v.predictor, r, im) for r, im in zip(records, images, strict=True)]
                       for v in vs]
    # The networks' own latency: ONNX Runtime on ready input arrays, no feature code around it.
    net_feeds_1 = {v.name: [[(part, net_feeds(fb, part.inputs, part.image_size))
                             for _, part in onnx_parts(v.predictor.bundle.model)] for fb in prepared]
                   for v, prepared in zip(vs, single_prepared, strict=True)
                   if list(onnx_parts(v.predictor.bundle.model))}
    for v in vs:
        net_feeds_1.setdefault(v.name, [])
    batches = {v.name: [_prepared_many(v.predictor, records[i:i + batch], images[i:i + batch])
                        for i in range(0, len(records) - batch + 1, batch)] for v in vs}
    total, done = rounds * len(vs), 0
    for round_no in range(1, rounds + 1):
        for v, prepared in zip(vs, single_prepared, strict=True):
            reporter.on_step("pass", f"round {round_no}/{rounds}: {v.name}", done, total)
            done += 1
            model = v.predictor.bundle.model
            for r, im, fb in zip(records, images, prepared, strict=True):
                t0 = time.perf_counter()
                v.predictor.predict_proba([r], [im])
                t1 = time.perf_counter()
                model.predict_proba(fb)
                v.model_single.append(time.perf_counter() - t1)
                v.single.append(t1 - t0)
            for feeds in net_feeds_1[v.name]:
                t0 = time.perf_counter()
                for part, f in feeds:
                    part.session.run(part.outputs, f)
                v.net_single.append(time.perf_counter() - t0)
            for i in range(0, len(records) - batch + 1, batch):
                t0 = time.perf_counter()
                v.predictor.predict_proba(records[i:i + batch], images[i:i + batch])
                v.batch_seconds += time.perf_counter() - t0
                v.batch_rows += batch
                fb = batches[v.name][i // batch]
                t0 = time.perf_counter()
                model.predict_proba(fb)
                v.model_batch_seconds += time.perf_counter() - t0
    if vs:
        reporter.on_step("pass", f"round {rounds}/{rounds}: {vs[-1].name}", total, total)


def timing_summary(v: Variant) -> dict[str, Any]:
    """Percentiles and throughputs of one variant's timings."""
    return {
        "p50_ms": _pct(v.single, 50), "p99_ms": _pct(v.single, 99),
        "model_p50_ms": _pct(v.model_single, 50), "model_p99_ms": _pct(v.model_single, 99),
        "net_p50_ms": _pct(v.net_single, 50) if v.net_single else None,
        "throughput_rps": v.batch_rows / v.batch_seconds if v.batch_seconds else float("nan"),
        "model_throughput_rps": (v.batch_rows / v.model_batch_seconds if v.model_batch_seconds
                                 else float("nan")),
    }


def _ratios(r: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {"macro_f1_delta_pts": 100 * (r["macro_f1"] - base["macro_f1"]),
            "speedup_p50": base["p50_ms"] / r["p50_ms"],
            "model_speedup_p50": base["model_p50_ms"] / r["model_p50_ms"],
            "net_speedup_p50": (base["net_p50_ms"] / r["net_p50_ms"]
                                if r["net_p50_ms"] and base["net_p50_ms"] else None),
            "throughput_ratio": r["throughput_rps"] / base["throughput_rps"],
            "model_throughput_ratio": r["model_throughput_rps"] / base["model_throughput_rps"],
            "size_ratio": r["size_bytes"] / base["size_bytes"]}


COLUMNS = [("variant", "variant", "{}"), ("how", "how", "{}"), ("accuracy", "acc", "{:.3f}"),
           ("macro_f1", "macro-F1", "{:.3f}"), ("macro_f1_delta_pts", "ΔF1 (pts)", "{:+.1f}"),
           ("ece", "ECE", "{:.3f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
           ("speedup_p50", "× p50", "{:.2f}"), ("model_p50_ms", "model p50 ms", "{:.3f}"),
           ("model_speedup_p50", "× model", "{:.2f}"), ("net_p50_ms", "ONNX p50 ms", "{:.3f}"),
           ("net_speedup_p50", "× ONNX", "{:.2f}"), ("throughput_rps", "rows/s @64", "{:.0f}"),
           ("throughput_ratio", "× rows/s", "{:.2f}"), ("model_throughput_rps", "model rows/s @64", "{:.0f}"),
           ("model_throughput_ratio", "× model rows/s", "{:.2f}"), ("size_bytes", "size KiB", "{}"),
           ("size_ratio", "× size", "{:.2f}")]


def _cell(key: str, fmt: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "size_bytes":
        return f"{value / 1024:.0f}"
    return fmt.format(value)


def to_markdown(report: dict[str, Any]) -> str:
    """The comparison as a markdown table, one row per variant."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in report["rows"]:
        lines.append("| " + " | ".join(_cell(k, f, r[k]) for k, _, f in COLUMNS) + " |")
    out = "\n".join(lines) + "\n"
    if report["versus"]:
        out += ("\n| variant | vs | macro-F1 kept | × p50 | × model p50 | × rows/s | × size |\n"
                "|---|---|---|---|---|---|---|\n")
        for p in report["versus"]:
            out += (f"| {p['variant']} | {p['reference']} | {p['macro_f1_kept']:.1%} | "
                    f"{p['speedup_p50']:.2f} | {p['model_speedup_p50']:.2f} | "
                    f"{p['throughput_ratio']:.2f} | {p['size_ratio']:.2f} |\n")
    return out


def save_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write the comparison as `bench_models.json` and `.md` into `out`; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "bench_models.json", out / "bench_models.md"
    j.write_text(json.dumps(report, indent=2, default=float))
    md.write_text(to_markdown(report))
    return j, md
