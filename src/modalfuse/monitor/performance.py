"""Live performance: logged predictions joined with their ground-truth feedback, per window.

Windows are by prediction time (not by when the label arrived), aligned to multiples of the
window length since the epoch (UTC days for the default of one day), one series per model
version. Each window has its number of labelled rows, the share of its traffic that is
labelled, accuracy, macro-F1, expected calibration error and per-class recall. A window with
at least `min_labels` labels below the accuracy or macro-F1 threshold, or above the ECE
threshold, is flagged with a message. Labels may arrive days after their prediction, so an
old window can become flagged later: the report flags every window in its range.

The metrics are plain numpy, because the serving install has no scikit-learn: the ECE is
`inference.evaluate.expected_calibration_error` itself, and accuracy and macro-F1 are
defined as `classification_metrics` defines them (macro over the labels present in the
truth or the predictions; tests check the two agree).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.config import Settings
from modalfuse.inference.evaluate import expected_calibration_error
from modalfuse.monitor.predlog import LabelledPredictions, PredictionLog

# `modalfuse monitor` ends with this exit code when a window is flagged (1 and 2 are taken:
# errors and bugs), so a cron job can act on it.
ALERT_EXIT_CODE = 3


@dataclass(frozen=True)
class PerformanceThresholds:
    """When a window is flagged: the labels it needs, and the limits of its metrics."""

    window_s: float = 86400.0
    min_labels: int = 30
    min_accuracy: float = 0.55
    min_macro_f1: float = 0.45
    max_ece: float = 0.15

    @classmethod
    def from_settings(cls, settings: Settings) -> PerformanceThresholds:
        """The thresholds MODALFUSE_PERF_* and MODALFUSE_ALERT_* set."""
        return cls(settings.perf_window, settings.perf_min_labels, settings.alert_min_accuracy,
                   settings.alert_min_macro_f1, settings.alert_max_ece)


def live_metrics(proba: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE and per-class recall of probabilities against true label
    indices; macro-F1 as `classification_metrics` computes it, without scikit-learn."""
    pred = proba.argmax(axis=1)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    f1s = []
    for c in present:
        tp = int(np.sum((pred == c) & (y == c)))
        fp = int(np.sum((pred == c) & (y != c)))
        fn = int(np.sum((pred != c) & (y == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    recall = {labels[c]: {"recall": float(np.mean(pred[y == c] == c)), "support": int(np.sum(y == c))}
              for c in sorted(set(y.tolist()))}
    return {"accuracy": float(np.mean(pred == y)), "macro_f1": float(np.mean(f1s)),
            "ece": expected_calibration_error(proba, y), "per_class_recall": recall}


def window_alerts(window: dict[str, Any], t: PerformanceThresholds) -> list[str]:
    """The messages that flag one window; none when it has fewer than `min_labels` labels."""
    n = window["labelled"]
    if n < t.min_labels:
        return []
    where = f"model {window['model_version']}, window from {window['start']}, {n} labels"
    out = []
    if window["accuracy"] < t.min_accuracy:
        out.append(f"accuracy {window['accuracy']:.3f} is below {t.min_accuracy} "
                   f"(MODALFUSE_ALERT_MIN_ACCURACY); {where}")
    if window["macro_f1"] < t.min_macro_f1:
        out.append(f"macro-F1 {window['macro_f1']:.3f} is below {t.min_macro_f1} "
                   f"(MODALFUSE_ALERT_MIN_MACRO_F1); {where}")
    if window["ece"] > t.max_ece:
        out.append(f"ECE {window['ece']:.3f} is above {t.max_ece} "
                   f"(MODALFUSE_ALERT_MAX_ECE); {where}")
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _scored(labelled: LabelledPredictions, rows: pd.DataFrame,
            labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    # Probabilities and true label indices of rows of one model version.
    index = {lab: i for i, lab in enumerate(labels)}
    return labelled.proba(rows), np.array([index[v] for v in rows["true_label"]], dtype=int)


def model_performance(labelled: LabelledPredictions, version: str,
                      traffic: dict[tuple[str, int], int],
                      t: PerformanceThresholds) -> dict[str, Any]:
    """One model version's windows (oldest first) and its metrics over all of them."""
    labels = labelled.labels.get(version, [])
    rows = labelled.frame[labelled.frame["model_version"] == version]
    rows = rows[rows["true_label"].isin(labels)]  # feedback is validated; this is belt and braces
    index = np.floor(rows["ts"].to_numpy(dtype=float) / t.window_s).astype(int)
    windows = []
    for w in sorted(set(index.tolist())):
        part = rows[index == w]
        proba, y = _scored(labelled, part, labels)
        total = max(traffic.get((version, w), 0), len(part))
        window = {"model_version": version, "start": _iso(w * t.window_s),
                  "end": _iso((w + 1) * t.window_s), "predictions": total,
                  "labelled": len(part), "labelled_share": len(part) / total,
                  **live_metrics(proba, y, labels)}
        window["alerts"] = window_alerts(window, t)
        windows.append(window)
    proba, y = _scored(labelled, rows, labels)
    overall = live_metrics(proba, y, labels) if len(rows) else None
    predictions = sum(n for (v, _), n in traffic.items() if v == version)
    return {"labels": labels, "labelled": len(rows), "predictions": predictions,
            "overall": overall, "windows": windows, "latest": windows[-1] if windows else None}


def performance_summary(plog: PredictionLog, thresholds: PerformanceThresholds,
                        model_version: str | None = None, since: float | None = None,
                        until: float | None = None) -> dict[str, Any]:
    """Live performance of the logged predictions that have feedback: per model version, per
    window, with the flagged windows; `status` is "alert", "ok" or "no_feedback"."""
    labelled = plog.read_labelled(model_version, since, until)
    traffic = plog.traffic(thresholds.window_s, model_version, since, until)
    versions = sorted(set(labelled.frame["model_version"]))
    models = {v: model_performance(labelled, v, traffic, thresholds) for v in versions}
    windows = [w for m in models.values() for w in m["windows"]]
    alerts = [{"model_version": w["model_version"], "window_start": w["start"], "message": a}
              for w in windows for a in w["alerts"]]
    status = "alert" if alerts else "ok" if windows else "no_feedback"
    return {"status": status, "created_at": _iso(datetime.now(UTC).timestamp()),
            "thresholds": asdict(thresholds), "labelled": len(labelled),
            "predictions": sum(traffic.values()), "models": models,
            "windows": windows, "alerts": alerts}


def latest_window_start(plog: PredictionLog, window_s: float,
                        model_version: str | None = None) -> float | None:
    """Start of the window of the newest labelled prediction (of one model version when
    given; None: no feedback), so the live gauges can be refreshed from that window alone."""
    ts = plog.latest_labelled_ts(model_version)
    return None if ts is None else math.floor(ts / window_s) * window_s


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def performance_report(plog: PredictionLog, thresholds: PerformanceThresholds, out_dir: Path,
                       model_version: str | None = None,
                       since: float | None = None) -> dict[str, Any]:
    """Write performance.json, performance.png (accuracy and macro-F1 per window) and
    performance.html (Evidently's classification preset) into out_dir; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = performance_summary(plog, thresholds, model_version, since)
    files = {"summary": "performance.json"}
    if summary["windows"]:
        performance_png(summary, out_dir / "performance.png")
        files["chart"] = "performance.png"
        evidently_classification(plog.read_labelled(model_version, since),
                                 out_dir / "performance.html", thresholds.window_s)
        files["report"] = "performance.html"
    summary["files"] = files
    (out_dir / "performance.json").write_text(json.dumps(summary, indent=2, default=_plain))
    return summary


def performance_png(summary: dict[str, Any], path: Path) -> None:
    """Save accuracy and macro-F1 per window, one line per model version, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = summary["thresholds"]
    fig, ax = plt.subplots(figsize=(9, 4))
    for version, m in summary["models"].items():
        xs = np.array([datetime.fromisoformat(w["start"]).replace(tzinfo=None) for w in m["windows"]],
                      dtype="datetime64[s]")
        ax.plot(xs, [w["accuracy"] for w in m["windows"]], "o-", label=f"accuracy, {version}")
        ax.plot(xs, [w["macro_f1"] for w in m["windows"]], "s--", label=f"macro-F1, {version}")
    ax.axhline(t["min_accuracy"], color="#c0392b", ls=":", lw=1, label="min accuracy")
    ax.axhline(t["min_macro_f1"], color="#e67e22", ls=":", lw=1, label="min macro-F1")
    ax.set_ylim(0, 1)
    ax.set_ylabel("on labelled traffic")
    ax.set_title(f"live performance per {t['window_s'] / 3600:g} h window (by prediction time)")
    ax.legend(fontsize=7, loc="lower left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evidently_classification(labelled: LabelledPredictions, html: Path,
                             window_s: float = 86400.0) -> None:
    """Evidently's ClassificationPreset on the labelled rows of the newest model version, saved
    as HTML; the rows of its first window are the reference when later windows exist."""
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    frame = labelled.frame
    version = frame["model_version"].iloc[-1]
    rows = frame[frame["model_version"] == version]
    cur = pd.DataFrame({"target": rows["true_label"].astype(str).to_numpy(),
                        "prediction": rows["label"].astype(str).to_numpy()})
    definition = DataDefinition(
        categorical_columns=["target", "prediction"],
        classification=[MulticlassClassification(target="target", prediction_labels="prediction")])
    windows = np.floor(rows["ts"].to_numpy(dtype=float) / window_s)
    in_first = windows == windows.min()
    current = Dataset.from_pandas(cur, data_definition=definition)
    reference = (Dataset.from_pandas(cur[in_first].reset_index(drop=True),
                                     data_definition=definition)
                 if 0 < in_first.sum() < len(cur) else None)
    snapshot = Report([ClassificationPreset()]).run(current_data=current, reference_data=reference)
    snapshot.save_html(str(html))
