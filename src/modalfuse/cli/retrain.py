"""Stage 6, operations: `modalfuse retrain`, the retraining trigger.

Decide (drift of the logged predictions, live accuracy on labelled feedback, or always),
retrain on the current data (the DVC pipeline, or its train stage as a function), register
the bundle as a challenger, run the out-of-fold gate, and optionally start it as a shadow
on a running server. The decision needs `monitor`, which `training` may not import, so it
is made here; the rest is `modalfuse.training.retrain`.

Exit codes: 0 when it ran as it should, whatever it decided (nothing to do, a bundle that
is already registered, promoted, or refused by the gate: a refusal is a normal outcome and
is recorded); 1 for an error (no data, a failed stage, a server that cannot be reached);
2 for option values that do not fit.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from modalfuse.cli.common import OPERATIONS, USAGE, DatasetOpt, app, console, fail, settings
from modalfuse.errors import ModalfuseError

if TYPE_CHECKING:
    from modalfuse.config import Settings
    from modalfuse.data.dataset import Dataset
    from modalfuse.data.split import Splits
    from modalfuse.inference.bundle import ModelBundle
    from modalfuse.training.retrain import RetrainSummary, TriggerDecision


class Trigger(StrEnum):
    """What makes `modalfuse retrain` retrain."""

    drift = "drift"
    performance = "performance"
    always = "always"


@app.command(rich_help_panel=OPERATIONS)
def retrain(
    trigger: Annotated[Trigger, typer.Option("--if", help="retrain when: drift (the share of "
                                             "drifted columns of the logged predictions exceeds "
                                             "MODALFUSE_ALERT_MAX_DRIFT_SHARE), performance "
                                             "(accuracy on labelled feedback below "
                                             "MODALFUSE_ALERT_MIN_ACCURACY), or always")]
        = Trigger.drift,
    dataset: DatasetOpt = "pokemon",
    shadow_url: Annotated[str | None, typer.Option(help="a running server (http://host:8000): "
                                                   "start the new challenger there as a shadow "
                                                   "(POST /admin/shadow)")] = None,
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the server's "
                                             "API key (sent as X-API-Key)")] = "MODALFUSE_API_KEY",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and say what would run; "
                                          "train, register and write nothing")] = False,
    dvc: Annotated[bool, typer.Option("--dvc/--no-dvc", help="rerun the DVC pipeline (`dvc "
                                      "repro`, its data dir); --no-dvc: train params.yaml's model "
                                      "on the current built dataset as a function")] = True,
    repo: Annotated[Path | None, typer.Option(help="the repository with dvc.yaml and params.yaml "
                                              "(default: the current folder)")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml to read the train stage from "
                                                "(default: <repo>/params.yaml)")] = None,
    hours: Annotated[float | None, typer.Option(help="only predictions of the last N hours "
                                                "(--if performance: whole windows; default 7)")] = None,
    margin: Annotated[float, typer.Option(help="the gate: how much the lower end of the "
                                          "macro-F1 gain's interval must clear")] = 0.01,
    confidence: Annotated[float, typer.Option(help="the gate: the bootstrap interval's level")]
        = 0.90,
    resamples: Annotated[int, typer.Option(help="the gate: bootstrap resamples", min=100)] = 2000,
) -> None:
    """Retrain when drift or live performance says so: rerun the pipeline, register the bundle
    as challenger, run the out-of-fold gate, optionally start it as a shadow; writes a summary."""
    from modalfuse.training.retrain import (
        PARAMS_FILE,
        RetrainSummary,
        pipeline_data_dir,
        pipeline_params,
    )

    if shadow_url is not None and not shadow_url.startswith(("http://", "https://")):
        fail(f"--shadow-url {shadow_url!r} is not an http:// or https:// URL", USAGE)
    api_key = os.environ.get(api_key_env, "") if shadow_url else ""
    if shadow_url and not api_key:
        fail(f"--shadow-url needs the server's API key in ${api_key_env} (--api-key-env)")
    root = (repo or Path.cwd()).resolve()
    pipeline = pipeline_params(params or root / PARAMS_FILE)
    s = settings()
    if dvc:
        s = _pipeline_settings(s, root, pipeline, dataset, pipeline_data_dir(root, pipeline))
    decision = decide(trigger, s, dataset, hours, dry_run)
    summary = RetrainSummary(dataset, decision, dry_run, data_dir=str(s.data_dir))
    colour = "green" if decision.retrain else "yellow"
    console.print(f"[{colour}]{'retrain' if decision.retrain else 'no retrain'}[/] "
                  f"(--if {trigger.value}): {escape(decision.reason)}", highlight=False)
    if not decision.retrain or dry_run:
        summary.outcome = "dry_run" if decision.retrain else "nothing_to_do"
        if dry_run and decision.retrain:
            console.print("dry run: would " + ("run `dvc repro` in " + str(root) if dvc else
                          "train params.yaml's model on the current built dataset")
                          + ", register the bundle as challenger and run the gate (--on cv)"
                          + (f", then start it as a shadow on {shadow_url}" if shadow_url else ""))
        _finish(summary, s, write=not dry_run)
        return
    bundle, ds, splits = _retrain(s, dataset, root, pipeline, dvc, summary)
    _register(bundle, ds, splits, s, summary, margin, confidence, resamples)
    if shadow_url:
        _shadow(summary, shadow_url, api_key, s)
    _finish(summary, s)


def _pipeline_settings(s: Settings, root: Path, pipeline: dict[str, Any], dataset: str,
                       data_dir: Path) -> Settings:
    """The settings of a DVC retrain: the pipeline's data dir (where `dvc repro` writes)."""
    named = (pipeline.get("dataset") or {}).get("name")
    if named and named != dataset:
        fail(f"the pipeline in {root} builds dataset {named!r}, not {dataset!r}: pass "
             f"--dataset {named}, or --no-dvc", USAGE)
    if s.data_dir.resolve() != data_dir:
        console.print(f"[dim]DVC retrain: data dir {data_dir} (params.yaml data_dir), not "
                      f"{s.data_dir}[/]", highlight=False)
    return s.model_copy(update={"data_dir": data_dir})


# -- the decision -----------------------------------------------------------------------------
# How many windows of live performance `--if performance` looks back over by default.
PERF_LOOKBACK_WINDOWS = 7


def window_start(now: float, window_s: float, hours: float | None) -> float:
    """The start of the first whole performance window (windows are aligned to the epoch) of
    the last `hours`, or of the last PERF_LOOKBACK_WINDOWS windows."""
    lookback = hours * 3600 if hours else PERF_LOOKBACK_WINDOWS * window_s
    return math.floor((now - lookback) / window_s) * window_s
def decide(trigger: Trigger, s: Settings, dataset: str, hours: float | None = None,
           dry_run: bool = False) -> TriggerDecision:
    """Whether to retrain now, and why, by the check `trigger` names."""
    from modalfuse.training.retrain import TriggerDecision

    if trigger is Trigger.always:
        return TriggerDecision(trigger.value, True, "asked to retrain whatever the monitoring says")
    if trigger is Trigger.drift:
        return drift_decision(s, dataset, hours, dry_run)
    return performance_decision(s, dataset, hours)


def served_predictor(s: Settings, dataset: str) -> Any:
    """The Predictor of the model that serves `dataset` now (the champion, else the latest)."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.tracking.source import bundle_for, describe_source

    path, source = bundle_for(s, dataset)
    console.print(f"[dim]{describe_source(source)}[/]", highlight=False)
    return Predictor.from_path(path)


def drift_decision(s: Settings, dataset: str, hours: float | None = None,
                   dry_run: bool = False) -> TriggerDecision:
    """Retrain when the share of drifted columns (what `modalfuse monitor` computes) of the
    served model's logged predictions exceeds `alert_max_drift_share`."""
    from modalfuse.monitor.drift import MIN_ROWS, NoReferenceError, load_or_build_reference
    from modalfuse.monitor.predlog import PredictionLog
    from modalfuse.monitor.report import monitor_report
    from modalfuse.training.retrain import TriggerDecision

    predictor = served_predictor(s, dataset)
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
        try:
            reference = load_or_build_reference(predictor, ref_dir, s.dataset_dir(dataset))
        except NoReferenceError as e:
            fail(str(e))
        folder = (Path(tmp) / "report" if dry_run
                  else s.reports_dir / "monitoring" / time.strftime("%Y%m%d-%H%M%S"))
        with console.status(f"drift check of {len(logged)} logged predictions"):
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


def performance_decision(s: Settings, dataset: str, hours: float | None = None) -> TriggerDecision:
    """Retrain when the live performance alert (`monitor.performance`: accuracy, macro-F1 or
    ECE of a window with at least `perf_min_labels` labels) fires for the served model in a
    whole window of the last `hours` (default: PERF_LOOKBACK_WINDOWS windows), so labels that
    arrive days late still count and no window is cut at the run's hour."""
    from modalfuse.monitor.performance import PerformanceThresholds, performance_summary
    from modalfuse.monitor.predlog import PredictionLog
    from modalfuse.training.retrain import TriggerDecision

    predictor = served_predictor(s, dataset)
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


# -- retrain, register, gate, shadow -----------------------------------------------------------
def _retrain(s: Settings, dataset: str, root: Path, pipeline: dict[str, Any], dvc: bool,
             summary: RetrainSummary) -> tuple[ModelBundle, Dataset, Splits]:
    """Train on the current data: `dvc repro`, or the train stage as a function."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.training.retrain import RetrainError, dvc_repro, train_config, train_on_current

    cfg = train_config(pipeline)
    started = time.perf_counter()
    try:
        if dvc:
            console.print(f"running `dvc repro` in {root}")
            stages = dvc_repro(root, on_line=lambda line: console.print(
                f"  [dim]{escape(line)}[/]", highlight=False))
            ds = load_dataset(s.dataset_dir(dataset))
            splits = load_splits(ds)
            bundle = load_bundle(s.models_dir / dataset)
            summary.training = {"via": "dvc", "stages": stages}
        else:
            ds = load_dataset(s.dataset_dir(dataset))
            splits = load_splits(ds)
            with console.status(f"training {cfg.model} ({cfg.num_boost_round} rounds, seed "
                                f"{cfg.seed}) on {ds.spec.name} version {ds.version}: grouped "
                                "CV, then the final fit"):
                bundle = train_on_current(ds, splits, s.models_dir, cfg)
            summary.training = {"via": "functions", "config": {
                "model": cfg.model, "rounds": cfg.num_boost_round, "seed": cfg.seed}}
    except (RetrainError, ModalfuseError, ValueError) as e:  # no data, a bad recipe, a failed run
        fail_recorded(summary, s, str(e))
    cv = (bundle.metrics.get("cv") or {}).get("macro_f1") or {}
    summary.training.update({"bundle": str(bundle.path), "model_version": bundle.model_version,
                             "dataset_version": ds.version, "cv_macro_f1": cv.get("mean"),
                             "seconds": round(time.perf_counter() - started, 1)})
    console.print(f"bundle {bundle.model_version} at {bundle.path}" +
                  (f" (CV macro-F1 {cv['mean']:.3f})" if cv.get("mean") is not None else ""))
    return bundle, ds, splits


def _register(bundle: ModelBundle, ds: Dataset, splits: Splits, s: Settings,
              summary: RetrainSummary, margin: float, confidence: float, resamples: int) -> None:
    """Register the bundle (unless it already is) and run the gate; record both."""
    from modalfuse.tracking.registry import RegistryError
    from modalfuse.training.retrain import already_registered, gate_record, register_and_gate

    name = ds.spec.name
    existing = already_registered(s, name, bundle)
    if existing is not None:
        summary.outcome = "unchanged"
        summary.registry = {"name": name, "version": existing, "new": False}
        console.print(f"[yellow]unchanged[/]: bundle {bundle.model_version} is already {name} "
                      f"version {existing} (nothing in the data or the code changed); not "
                      "registered again")
        return
    try:
        with console.status("logging the run to MLflow, registering, running the gate"):
            tracked, decision = register_and_gate(bundle, ds, splits, s, margin, confidence,
                                                  resamples)
    except RegistryError as e:
        fail_recorded(summary, s, str(e))
    summary.registry = {"name": name, "version": tracked.registered_version, "new": True,
                        "alias": tracked.alias, "run_id": tracked.run_id,
                        "model_uri": f"models:/{name}/{tracked.registered_version}"}
    summary.gate = gate_record(decision)
    if decision is None:
        summary.outcome = "first_champion"
    else:
        summary.outcome = "promoted" if decision.promoted else "refused"
    iv = summary.gate.get("interval")
    if iv:
        console.print(f"gate (--on cv): macro_f1 gain {iv['gain']:+.4f}, "
                      f"{round(iv['confidence'] * 100)}% interval [{iv['low']:+.4f}, "
                      f"{iv['high']:+.4f}] over {iv['rows']} out-of-fold rows; margin {margin}")
    word = {"promoted": "[green]promoted[/]", "refused": "[yellow]refused[/]",
            "first_champion": "[green]champion[/]"}[summary.outcome]
    console.print(f"{name} version {tracked.registered_version}: {word}: "
                  f"{escape(summary.gate['reason'])}", highlight=False)


def _shadow(summary: RetrainSummary, url: str, api_key: str, s: Settings) -> None:
    """Start the new challenger as a shadow on the server; a promoted version needs none."""
    from modalfuse.training.retrain import RetrainError, start_shadow

    uri = summary.registry.get("model_uri")
    summary.shadow = {"requested": True, "started": False, "url": url, "model_uri": uri}
    if summary.outcome != "refused":
        why = {"promoted": "the new version is the champion: reload the server "
                           "(POST /admin/reload) to serve it",
               "first_champion": "the new version is the champion: reload the server "
                                 "(POST /admin/reload) to serve it",
               "unchanged": "no new version"}.get(summary.outcome, "no challenger")
        summary.shadow["skipped"] = why
        console.print(f"shadow not started: {why}")
        return
    try:
        answer = start_shadow(url, str(uri), api_key)
    except RetrainError as e:
        summary.shadow["error"] = str(e)
        path = _finish(summary, s)
        fail(f"{e} (the challenger is registered; summary: {path})")
    summary.shadow.update({"started": True, **answer})
    console.print(f"[green]shadow started[/] on {url}: {uri}")


def fail_recorded(summary: RetrainSummary, s: Settings, message: str) -> NoReturn:
    """Record the error in the run's summary, write it, and exit 1 with the message."""
    summary.outcome = "error"
    summary.error = message
    path = _finish(summary, s)
    fail(f"{message} (summary: {path})")


def _finish(summary: RetrainSummary, s: Settings, write: bool = True) -> Path | None:
    """Print the summary's one-line outcome and write its JSON (not on a dry run)."""
    from modalfuse.training.retrain import utc_stamp, write_summary

    summary.finished_at = utc_stamp()
    if not write:
        console.print(f"outcome: {summary.outcome} (dry run: nothing written)")
        return None
    path = write_summary(summary, s.reports_dir)
    console.print(f"outcome: {summary.outcome}; summary: {path}")
    return path
