"""Stage 6, operations: `modalfuse monitor`, the drift, skew and live performance reports of
logged predictions.

A thin Typer wrapper over `modalfuse.monitor`; Evidently is imported inside the command. Exit
codes: 1 for an error, 3 (`monitor.performance.ALERT_EXIT_CODE`) when a window of live
performance is flagged, so a cron job can act on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modalfuse.cli.common import (
    OPERATIONS,
    BundleBriefOpt,
    DatasetOpt,
    app,
    bundle_path,
    console,
    fail,
    settings,
)

if TYPE_CHECKING:
    from modalfuse.inference.predictor import Predictor
    from modalfuse.monitor.predlog import LoggedPredictions, PredictionLog


@app.command(rich_help_panel=OPERATIONS)
def monitor(
    dataset: DatasetOpt = "",
    bundle: BundleBriefOpt = None,
    hours: Annotated[float | None, typer.Option(help="only predictions of the last N hours")]
    = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: "
                                             "<data dir>/reports/monitoring/<time>)")] = None,
    drift: Annotated[bool, typer.Option("--drift/--no-drift", help="the drift and skew report "
                                        "(needs the model's training data)")] = True,
    performance: Annotated[bool | None, typer.Option(
        "--performance/--no-performance", help="live performance on labelled traffic "
        "(POST /v1/feedback); default: when the model has feedback")] = None,
    shadow: Annotated[bool, typer.Option("--shadow/--no-shadow", help="the shadow release: "
                                         "agreement with the champion and, on labelled rows, "
                                         "both models' accuracy")] = False,
) -> None:
    """Drift (Evidently: fields and predictions), skew (features) and live performance
    (feedback) of logged predictions; exit code 3 when a performance window is flagged."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.monitor.performance import ALERT_EXIT_CODE
    from modalfuse.monitor.predlog import PredictionLog

    s = settings()
    predictor = Predictor.from_path(bundle_path(bundle, dataset, announce=False))
    plog = PredictionLog(s.data_dir / "monitoring" / "predictions.db")
    since = time.time() - hours * 3600 if hours else None
    folder = out or s.reports_dir / "monitoring" / time.strftime("%Y%m%d-%H%M%S")
    version = predictor.model_version
    alert = False
    monitor_inputs(plog.read(model_version=version, since=since), version, folder)
    if drift:
        monitor_drift(predictor, plog, since, folder)
    if performance or (performance is None and plog.latest_labelled_ts(version) is not None):
        alert = monitor_performance(plog, version, since, folder)
    if shadow:
        monitor_shadow(s.data_dir, since, folder)
    console.print(f"report: {folder}")
    if alert:
        raise typer.Exit(ALERT_EXIT_CODE)


def monitor_inputs(logged: LoggedPredictions, version: str, folder: Path) -> None:
    """The inputs section: what rows were scored from and the share flagged out of
    distribution (image, fields), printed and written to inputs.json in `folder`."""
    import json

    summary = logged.input_flags()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inputs.json").write_text(json.dumps(summary, indent=2))
    t = Table(title=f"inputs, model {version}: {summary['rows']} logged rows")
    for col in ("check", "result"):
        t.add_column(col)
    mix = ", ".join(f"{k} {v}" for k, v in summary["modalities"].items()) or "none"
    t.add_row("scored from", mix)
    t.add_row("OOD image", f"{summary['ood_image_share']:.1%}")
    t.add_row("OOD fields", f"{summary['ood_fields_share']:.1%}")
    t.add_row("OOD (any input)", f"{summary['ood_any_share']:.1%}")
    console.print(t)


def monitor_shadow(data_dir: Path, since: float | None, folder: Path) -> None:
    """The shadow section: shadow_report.json and .md in `folder`, and its table printed."""
    import json

    from modalfuse.monitor.shadowlog import shadow_markdown, shadow_report

    report = shadow_report(data_dir, since=since)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shadow_report.json").write_text(json.dumps(report, indent=2, default=str))
    text = shadow_markdown(report)
    (folder / "shadow_report.md").write_text(text)
    console.print(text, markup=False, highlight=False)


def monitor_drift(predictor: Predictor, plog: PredictionLog, since: float | None,
                  folder: Path) -> None:
    """The drift and skew section: drift.html, skew.png and summary.json in `folder`."""
    from modalfuse.monitor.drift import NoReferenceError, load_or_build_reference
    from modalfuse.monitor.drift_report import monitor_report

    s = settings()
    try:
        reference = load_or_build_reference(predictor, s.data_dir / "monitoring",
                                            s.dataset_dir(predictor.spec.name))
    except NoReferenceError as e:
        fail(f"{e} (--no-drift skips the drift report)")
    logged = plog.read(model_version=predictor.model_version, since=since)
    print_monitoring(monitor_report(predictor, reference, logged, folder), predictor.model_version)


def monitor_performance(plog: PredictionLog, model_version: str, since: float | None,
                        folder: Path) -> bool:
    """The live performance section: performance.json, .png and .html in `folder`, the
    windows table and the alerts; True when a window is flagged."""
    from modalfuse.monitor.performance import PerformanceThresholds, performance_report

    summary = performance_report(plog, PerformanceThresholds.from_settings(settings()), folder,
                                 model_version, since)
    print_performance(summary, model_version)
    return summary["status"] == "alert"


def print_monitoring(summary: dict, model_version: str) -> None:
    """The monitoring summary as one table: rows compared, data and prediction drift, skew."""
    t = Table(title=f"monitoring, model {model_version}: {summary['status']}")
    for col in ("check", "result"):
        t.add_column(col)
    t.add_row("rows", f"{summary['serving_rows']} serving vs {summary['reference_rows']} "
                      "training (reference)")
    if summary["serving_rows"]:
        ev = summary["evidently"]
        t.add_row("data drift (Evidently)", f"{ev['drifted_columns']:.0f} drifted columns, share "
                                            f"{ev['share_drifted']:.2f}")
        pd_ = summary["prediction_drift"]
        t.add_row("prediction drift", f"PSI {pd_['psi']:.3f} ({pd_['status']})")
        sk = summary["skew"]
        worst = sk["top"][0]
        t.add_row("feature skew", f"{len(sk['skewed_features'])} features over PSI "
                                  f"{summary['thresholds']['psi_drift']}; worst "
                                  f"{worst['feature']} PSI {worst['psi']:.3f}")
    console.print(t)


def print_performance(summary: dict, model_version: str) -> None:
    """Live performance as one table (a row per window) and the alerts, one line each."""
    t = Table(title=f"live performance, model {model_version}: {summary['status']} "
                    f"({summary['labelled']} labelled of {summary['predictions']} predictions)")
    for col in ("window start (UTC)", "predictions", "labelled", "share", "accuracy",
                "macro-F1", "ECE", "flagged"):
        t.add_column(col)
    for w in summary["windows"]:
        t.add_row(w["start"][:16].replace("T", " "), str(w["predictions"]), str(w["labelled"]),
                  f"{w['labelled_share']:.2f}", f"{w['accuracy']:.3f}", f"{w['macro_f1']:.3f}",
                  f"{w['ece']:.3f}", "[red]yes[/]" if w["alerts"] else "")
    console.print(t)
    for a in summary["alerts"]:
        console.print(f"[bold red]alert:[/] {escape(a['message'])}", highlight=False)
