"""When to retrain: the checks behind `modalfuse retrain --if drift|performance|always`.

Each check looks at the model that serves the dataset now (the registry's champion, else the
latest bundle) and returns a `TriggerDecision`: whether to retrain, why in one sentence, and the
numbers it looked at. Drift is what `modalfuse monitor` computes on the logged predictions; live
performance is the alert of `monitor.performance` on labelled feedback.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modalfuse.config import Settings
from modalfuse.errors import InvalidInput
from modalfuse.inference.predictor import Predictor
from modalfuse.monitor.drift import MIN_ROWS, load_or_build_reference
from modalfuse.monitor.drift_report import monitor_report
from modalfuse.monitor.performance import PerformanceThresholds, performance_summary
from modalfuse.monitor.predlog import PredictionLog
from modalfuse.ops.reporter import Reporter
from modalfuse.tracking.source import bundle_for, describe_source

TRIGGERS = ("drift", "performance", "always")
# How many windows of live performance the performance check looks back over by default.
PERF_LOOKBACK_WINDOWS = 7


@dataclass
class TriggerDecision:
    """Whether a retrain is due, why, and the numbers the check looked at."""

    trigger: str
    retrain: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def check_trigger(trigger: str) -> str:
    """`trigger` when it is one of TRIGGERS; else InvalidInput naming the valid ones."""
    if trigger not in TRIGGERS:
        raise InvalidInput(f"unknown trigger {trigger!r}: use one of {', '.join(TRIGGERS)}")
    return trigger


def decide(trigger: str, settings: Settings, dataset: str, hours: float | None = None,
           dry_run: bool = False, reporter: Reporter | None = None) -> TriggerDecision:
    """Whether to retrain now, and why, by the check `trigger` names."""
    reporter = reporter or Reporter()
    if check_trigger(trigger) == "always":
        return TriggerDecision(trigger, True, "asked to retrain whatever the monitoring says")
    if trigger == "drift":
        return drift_decision(settings, dataset, hours, dry_run, reporter)
    return performance_decision(settings, dataset, hours, reporter)


def window_start(now: float, window_s: float, hours: float | None) -> float:
    """The start of the first whole performance window (windows are aligned to the epoch) of
    the last `hours`, or of the last PERF_LOOKBACK_WINDOWS windows."""
    lookback = hours * 3600 if hours else PERF_LOOKBACK_WINDOWS * window_s
    return math.floor((now - lookback) / window_s) * window_s


def served_predictor(settings: Settings, dataset: str, reporter: Reporter) -> Predictor:
    """The Predictor of the model that serves `dataset` now (the champion, else the latest)."""
    path, source = bundle_for(settings, dataset)
    reporter.say(f"[dim]{describe_source(source)}[/]", highlight=False)
    return Predictor.from_path(path)


def drift_decision(s: Settings, dataset: str, hours: float | None = None, dry_run: bool = False,
                   reporter: Reporter | None = None) -> TriggerDecision:
    """Retrain when the share of drifted columns (what `modalfuse monitor` computes) of the
    served model's logged predictions exceeds `alert_max_drift_share`."""
    reporter = reporter or Reporter()
    predictor = served_predictor(s, dataset, reporter)
    db = s.data_dir / "monitoring" / "predictions.db"
    since = time.time() - hours * 3600 if hours else None
    logged = PredictionLog(db).read(model_version=predictor.model_version, since=since)
    details: dict[str, Any] = {"model_version": predictor.model_version, "log": str(db),
                               "serving_rows": len(logged),
                               "threshold": s.alert_max_drift_share}
    if not len(logged):
        return TriggerDecision("drift", False, f"no logged predictions of model "
                               f"{predictor.model_version} in {db}: nothing to compare with "
                               "training, nothing to do", details)
    monitoring = s.data_dir / "monitoring"
    with tempfile.TemporaryDirectory(prefix="modalfuse-retrain-") as tmp:
        # A dry run writes nothing: neither the report nor a new cached reference.
        cached = (monitoring / "reference" / predictor.model_version / "reference.json").exists()
        ref_dir = monitoring if cached or not dry_run else Path(tmp)
        reference = load_or_build_reference(predictor, ref_dir, s.dataset_dir(dataset))
        folder = (Path(tmp) / "report" if dry_run
                  else s.reports_dir / "monitoring" / time.strftime("%Y%m%d-%H%M%S"))
        with reporter.busy(f"drift check of {len(logged)} logged predictions"):
            summary = monitor_report(predictor, reference, logged, folder)
    if not dry_run:
        details["report"] = str(folder)
    if summary["status"] == "insufficient_data":
        return TriggerDecision("drift", False, f"only {len(logged)} logged predictions (fewer than "
                               f"{MIN_ROWS}): too few to judge drift, nothing to do", details)
    evidently = summary.get("evidently") or {}
    share = evidently.get("share_drifted")
    source = "Evidently"
    if share is None:
        share, source = summary["data_drift"]["share_drifted"], "PSI"
    details.update({"share_drifted": share, "measured_by": source,
                    "status": summary["status"]})
    verdict = ">" if share > s.alert_max_drift_share else "<="
    reason = (f"share of drifted columns {share:.2f} ({source}, {len(logged)} logged rows) "
              f"{verdict} alert_max_drift_share {s.alert_max_drift_share}")
    return TriggerDecision("drift", share > s.alert_max_drift_share, reason, details)


def performance_decision(s: Settings, dataset: str, hours: float | None = None,
                         reporter: Reporter | None = None) -> TriggerDecision:
    """Retrain when the live performance alert (`monitor.performance`: accuracy, macro-F1 or
    ECE of a window with at least `perf_min_labels` labels) fires for the served model in a
    whole window of the last `hours` (default: PERF_LOOKBACK_WINDOWS windows), so labels that
    arrive days late still count and no window is cut at the run's hour."""
    predictor = served_predictor(s, dataset, reporter or Reporter())
    db = s.data_dir / "monitoring" / "predictions.db"
    summary = performance_summary(PredictionLog(db), PerformanceThresholds.from_settings(s),
                                  model_version=predictor.model_version,
                                  since=window_start(time.time(), s.perf_window, hours))
    details: dict[str, Any] = {"model_version": predictor.model_version, "log": str(db),
                               "status": summary["status"], "labelled": summary["labelled"],
                               "min_labels": s.perf_min_labels, "window_s": s.perf_window,
                               "alerts": [a["message"] for a in summary["alerts"]]}
    if summary["status"] == "alert":
        return TriggerDecision("performance", True, summary["alerts"][0]["message"], details)
    if summary["status"] == "no_feedback":
        reason = (f"no labelled predictions of model {predictor.model_version} in the windows "
                  f"looked at ({db}): nothing to judge, nothing to do")
    else:
        reason = (f"live performance of model {predictor.model_version} is within the alert "
                  f"thresholds on {summary['labelled']} labels (windows with fewer than "
                  f"{s.perf_min_labels} are not judged): nothing to do")
    return TriggerDecision("performance", False, reason, details)
