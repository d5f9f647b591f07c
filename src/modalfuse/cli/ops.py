"""Stage 6, operations: `modalfuse monitor`, the drift and skew report of logged predictions.

A thin Typer wrapper over `modalfuse.monitor`; Evidently is imported inside the command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
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


@app.command(rich_help_panel=OPERATIONS)
def monitor(
    dataset: DatasetOpt = "pokemon",
    bundle: BundleBriefOpt = None,
    hours: Annotated[float | None, typer.Option(help="only predictions of the last N hours")]
    = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: "
                                             "<data dir>/reports/monitoring/<time>)")] = None,
) -> None:
    """Drift (Evidently: fields and predictions) and skew (features) of logged predictions."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.monitor.drift import NoReferenceError, load_or_build_reference
    from modalfuse.monitor.predlog import PredictionLog
    from modalfuse.monitor.report import monitor_report

    s = settings()
    predictor = Predictor.from_path(bundle_path(bundle, dataset, announce=False))
    try:
        reference = load_or_build_reference(predictor, s.data_dir / "monitoring",
                                            s.dataset_dir(predictor.spec.name))
    except NoReferenceError as e:
        fail(str(e))
    since = time.time() - hours * 3600 if hours else None
    logged = PredictionLog(s.data_dir / "monitoring" / "predictions.db").read(
        model_version=predictor.model_version, since=since)
    folder = out or s.reports_dir / "monitoring" / time.strftime("%Y%m%d-%H%M%S")
    print_monitoring(monitor_report(predictor, reference, logged, folder), predictor.model_version)
    console.print(f"report: {folder}")


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
