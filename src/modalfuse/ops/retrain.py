"""Retraining, the whole operation: decide (drift of the logged predictions, live accuracy on
labelled feedback, or always), retrain on the current data (the DVC pipeline, or its train stage
as a function), register the bundle as a challenger, run the out-of-fold gate, and optionally
hand the challenger to a running server as a shadow.

`run_retrain` does it all and returns a `RetrainSummary`, which it also writes as JSON (not on a
dry run). A decision not to retrain, a bundle already registered and a refusal by the gate are
normal outcomes. A step that fails raises `RetrainFailed` once the summary, with the error in it,
is written.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from modalfuse.config import Settings
from modalfuse.data.dataset import Dataset, load_dataset
from modalfuse.data.split import Splits, load_splits
from modalfuse.errors import InvalidInput, ModalfuseError, ModelError, RegistryError
from modalfuse.inference.bundle import ModelBundle, load_bundle
from modalfuse.ops.reporter import Reporter
from modalfuse.ops.triggers import TriggerDecision, check_trigger, decide
from modalfuse.tracking.gate import PromotionDecision
from modalfuse.tracking.registry import CHAMPION, log_and_register, promote, trace
from modalfuse.tracking.runs import TrackedRun
from modalfuse.training.pipeline import (
    PARAMS_FILE,
    dvc_repro,
    pipeline_data_dir,
    pipeline_params,
    train_config,
    train_on_current,
)

# The header serve/security.py reads the API key from.
API_KEY_HEADER = "X-API-Key"


class RetrainError(ModelError):
    """A retrain cannot go on: a server that cannot be reached or refuses the shadow."""


class RetrainFailed(RetrainError):
    """A retrain that stopped part-way; its summary (outcome and error) is written at `path`."""

    def __init__(self, message: str, summary: RetrainSummary, path: Path) -> None:
        super().__init__(message)
        self.summary = summary
        self.path = path


class PipelineMismatch(InvalidInput):
    """The dataset asked for is not the one the DVC pipeline builds."""


@dataclass(frozen=True)
class RetrainOptions:
    """What one retrain is asked to do (the options of `modalfuse retrain`)."""

    trigger: str = "drift"  # drift, performance or always (ops.triggers.TRIGGERS)
    dataset: str = "pokemon"
    shadow_url: str | None = None  # a running server to start the challenger on as a shadow
    api_key: str = field(default="", repr=False)  # that server's API key
    dry_run: bool = False  # decide and say what would run; train, register and write nothing
    dvc: bool = True  # rerun the DVC pipeline; False: train params.yaml's model as a function
    repo: Path | None = None  # the repository with dvc.yaml and params.yaml (default: cwd)
    params: Path | None = None  # params.yaml (default: <repo>/params.yaml)
    hours: float | None = None  # only predictions of the last N hours
    margin: float = 0.01  # the gate: how much the gain's lower bound must clear
    confidence: float = 0.90  # the gate: the bootstrap interval's level
    resamples: int = 2000  # the gate: bootstrap resamples

    def __post_init__(self) -> None:
        check_trigger(self.trigger)


@dataclass
class RetrainSummary:
    """What one `modalfuse retrain` did: the decision, the training, the registry, the gate, the shadow."""

    dataset: str
    decision: TriggerDecision
    dry_run: bool = False
    # nothing_to_do, dry_run, unchanged, first_champion, promoted, refused, error
    outcome: str = "nothing_to_do"
    started_at: str = field(default_factory=lambda: utc_stamp())
    finished_at: str | None = None
    data_dir: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=lambda: {"requested": False, "started": False})
    error: str | None = None  # what stopped a run that ended in an error

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)


def utc_stamp() -> str:
    """Now in UTC, to the second (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_summary(summary: RetrainSummary, reports_dir: Path) -> Path:
    """Write the summary as `<reports_dir>/retrain/retrain-<UTC time>.json`; returns the path."""
    summary.finished_at = summary.finished_at or utc_stamp()
    folder = reports_dir / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    path = folder / f"retrain-{stamp}.json"
    path.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    return path


# -- the operation ----------------------------------------------------------------------------
def run_retrain(settings: Settings, options: RetrainOptions,
                reporter: Reporter | None = None) -> RetrainSummary:
    """Decide by `options.trigger`; when due, retrain, register the bundle as challenger, run
    the gate and optionally start a shadow. Writes the summary (not on a dry run), returns it."""
    reporter = reporter or Reporter()
    root = (options.repo or Path.cwd()).resolve()
    pipeline = pipeline_params(options.params or root / PARAMS_FILE)
    s = settings
    if options.dvc:  # `dvc repro` writes to the pipeline's data dir
        s = pipeline_settings(settings, root, pipeline, options.dataset, reporter)
    decision = decide(options.trigger, s, options.dataset, options.hours, options.dry_run, reporter)
    summary = RetrainSummary(options.dataset, decision, options.dry_run, data_dir=str(s.data_dir))
    colour = "green" if decision.retrain else "yellow"
    reporter.say(f"[{colour}]{'retrain' if decision.retrain else 'no retrain'}[/] "
                 f"(--if {options.trigger}): {escape(decision.reason)}", highlight=False)
    if not decision.retrain or options.dry_run:
        summary.outcome = "dry_run" if decision.retrain else "nothing_to_do"
        if options.dry_run:
            if decision.retrain:
                reporter.say(dry_run_plan(options, root))
            summary.finished_at = utc_stamp()
            reporter.say(f"outcome: {summary.outcome} (dry run: nothing written)")
        else:
            finish(summary, s, reporter)
        return summary
    bundle, ds, splits = retrain_bundle(s, options, root, pipeline, summary, reporter)
    register(bundle, ds, splits, s, options, summary, reporter)
    if options.shadow_url:
        shadow(summary, options.shadow_url, options.api_key, s, reporter)
    finish(summary, s, reporter)
    return summary


def pipeline_settings(s: Settings, root: Path, pipeline: dict[str, Any], dataset: str,
                      reporter: Reporter) -> Settings:
    """The settings of a DVC retrain: the pipeline's data dir (where `dvc repro` writes)."""
    named = (pipeline.get("dataset") or {}).get("name")
    if named and named != dataset:
        raise PipelineMismatch(f"the pipeline in {root} builds dataset {named!r}, not "
                               f"{dataset!r}: pass --dataset {named}, or --no-dvc")
    data_dir = pipeline_data_dir(root, pipeline)
    if s.data_dir.resolve() != data_dir:
        reporter.say(f"[dim]DVC retrain: data dir {data_dir} (params.yaml data_dir), not "
                     f"{s.data_dir}[/]", highlight=False)
    return s.model_copy(update={"data_dir": data_dir})


def dry_run_plan(options: RetrainOptions, root: Path) -> str:
    """What a retrain would do, said by a dry run that decided to retrain."""
    return ("dry run: would " + ("run `dvc repro` in " + str(root) if options.dvc else
            "train params.yaml's model on the current built dataset")
            + ", register the bundle as challenger and run the gate (--on cv)"
            + (f", then start it as a shadow on {options.shadow_url}" if options.shadow_url else ""))


def finish(summary: RetrainSummary, s: Settings, reporter: Reporter) -> Path:
    """Stamp the end, write the summary's JSON and say the outcome; returns the JSON's path."""
    summary.finished_at = utc_stamp()
    path = write_summary(summary, s.reports_dir)
    reporter.say(f"outcome: {summary.outcome}; summary: {path}")
    return path


def failed(summary: RetrainSummary, s: Settings, reporter: Reporter, message: str) -> RetrainFailed:
    """Record the error in the summary and write it; returns the error to raise, which says
    where the summary is."""
    summary.outcome = "error"
    summary.error = message
    path = finish(summary, s, reporter)
    return RetrainFailed(f"{message} (summary: {path})", summary, path)


# -- retrain, register, gate, shadow -----------------------------------------------------------
def retrain_bundle(s: Settings, options: RetrainOptions, root: Path, pipeline: dict[str, Any],
                   summary: RetrainSummary, reporter: Reporter) -> tuple[ModelBundle, Dataset, Splits]:
    """Train on the current data: `dvc repro`, or the train stage as a function."""
    cfg = train_config(pipeline)
    started = time.perf_counter()
    try:
        if options.dvc:
            reporter.say(f"running `dvc repro` in {root}")
            stages = dvc_repro(root, on_line=lambda line: reporter.say(
                f"  [dim]{escape(line)}[/]", highlight=False))
            ds = load_dataset(s.dataset_dir(options.dataset))
            splits = load_splits(ds)
            bundle = load_bundle(s.models_dir / options.dataset)
            summary.training = {"via": "dvc", "stages": stages}
        else:
            ds = load_dataset(s.dataset_dir(options.dataset))
            splits = load_splits(ds)
            with reporter.busy(f"training {cfg.model} ({cfg.num_boost_round} rounds, seed "
                               f"{cfg.seed}) on {ds.spec.name} version {ds.version}: grouped "
                               "CV, then the final fit"):
                bundle = train_on_current(ds, splits, s.models_dir, cfg)
            summary.training = {"via": "functions", "config": {
                "model": cfg.model, "rounds": cfg.num_boost_round, "seed": cfg.seed}}
    except (ModalfuseError, ValueError) as e:  # no data, a bad recipe, a failed run
        raise failed(summary, s, reporter, str(e)) from e
    cv = (bundle.metrics.get("cv") or {}).get("macro_f1") or {}
    summary.training.update({"bundle": str(bundle.path), "model_version": bundle.model_version,
                             "dataset_version": ds.version, "cv_macro_f1": cv.get("mean"),
                             "seconds": round(time.perf_counter() - started, 1)})
    reporter.say(f"bundle {bundle.model_version} at {bundle.path}" +
                 (f" (CV macro-F1 {cv['mean']:.3f})" if cv.get("mean") is not None else ""))
    return bundle, ds, splits


def register(bundle: ModelBundle, ds: Dataset, splits: Splits, s: Settings,
             options: RetrainOptions, summary: RetrainSummary, reporter: Reporter) -> None:
    """Register the bundle (unless it already is) and run the gate; record both."""
    name = ds.spec.name
    existing = already_registered(s, name, bundle)
    if existing is not None:
        summary.outcome = "unchanged"
        summary.registry = {"name": name, "version": existing, "new": False}
        reporter.say(f"[yellow]unchanged[/]: bundle {bundle.model_version} is already {name} "
                     f"version {existing} (nothing in the data or the code changed); not "
                     "registered again")
        return
    try:
        with reporter.busy("logging the run to MLflow, registering, running the gate"):
            tracked, decision = register_and_gate(bundle, ds, splits, s, options.margin,
                                                  options.confidence, options.resamples)
    except RegistryError as e:
        raise failed(summary, s, reporter, str(e)) from e
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
        reporter.say(f"gate (--on cv): macro_f1 gain {iv['gain']:+.4f}, "
                     f"{round(iv['confidence'] * 100)}% interval [{iv['low']:+.4f}, "
                     f"{iv['high']:+.4f}] over {iv['rows']} out-of-fold rows; margin {options.margin}")
    word = {"promoted": "[green]promoted[/]", "refused": "[yellow]refused[/]",
            "first_champion": "[green]champion[/]"}[summary.outcome]
    reporter.say(f"{name} version {tracked.registered_version}: {word}: "
                 f"{escape(summary.gate['reason'])}", highlight=False)


def already_registered(settings: Settings, name: str, bundle: ModelBundle) -> str | None:
    """The registered version of `name` that holds this very bundle, or None."""
    for found in trace(settings, bundle.model_version):
        if found["registered_model"] == name:
            return str(found["version"])
    return None


def register_and_gate(bundle: ModelBundle, ds: Dataset, splits: Splits, settings: Settings,
                      margin: float = 0.01, confidence: float = 0.90,
                      resamples: int = 2000) -> tuple[TrackedRun, PromotionDecision | None]:
    """Log and register the bundle (challenger, or champion when it is the first version), then
    run the out-of-fold gate on it; no gate (None) for a first version."""
    tracked = log_and_register(bundle, ds, splits, settings, run_name=f"retrain-{bundle.model_version}")
    if tracked.alias == CHAMPION:
        return tracked, None
    decision = promote(settings, ds.spec.name, ds, splits, "macro_f1", margin, on="cv",
                       confidence=confidence, resamples=resamples)
    return tracked, decision


def gate_record(decision: PromotionDecision | None) -> dict[str, Any]:
    """What the summary keeps of a gate decision: the verdict, its reason and the interval."""
    if decision is None:
        return {"ran": False, "promoted": True,
                "reason": "first registered version: it is the champion, nothing to compare"}
    return {"ran": True, "promoted": decision.promoted, "reason": decision.reason,
            "on": decision.on, "metric": decision.metric, "margin": decision.margin,
            "interval": decision.interval,
            "champion_version": decision.champion.version if decision.champion else None,
            "challenger_version": decision.challenger.version if decision.challenger else None,
            "plot": decision.plot}


# -- shadow release ----------------------------------------------------------------------------
def shadow(summary: RetrainSummary, url: str, api_key: str, s: Settings, reporter: Reporter) -> None:
    """Start the new challenger as a shadow on the server; a promoted version needs none."""
    uri = summary.registry.get("model_uri")
    summary.shadow = {"requested": True, "started": False, "url": url, "model_uri": uri}
    if summary.outcome != "refused":
        why = {"promoted": "the new version is the champion: reload the server "
                           "(POST /admin/reload) to serve it",
               "first_champion": "the new version is the champion: reload the server "
                                 "(POST /admin/reload) to serve it",
               "unchanged": "no new version"}.get(summary.outcome, "no challenger")
        summary.shadow["skipped"] = why
        reporter.say(f"shadow not started: {why}")
        return
    try:
        answer = start_shadow(url, str(uri), api_key)
    except RetrainError as e:
        summary.shadow["error"] = str(e)
        path = finish(summary, s, reporter)
        raise RetrainFailed(f"{e} (the challenger is registered; summary: {path})",
                            summary, path) from None
    summary.shadow.update({"started": True, **answer})
    reporter.say(f"[green]shadow started[/] on {url}: {uri}")


def start_shadow(url: str, model_uri: str, api_key: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """POST `{url}/admin/shadow {"model_uri": ...}` to a running server; returns its answer.

    Raises RetrainError, with what to check, when the server cannot be reached or says no."""
    if not url.startswith(("http://", "https://")):  # urlopen would open file:// URLs too
        raise RetrainError(f"server URL {url!r} is not an http:// or https:// URL")
    endpoint = url.rstrip("/") + "/admin/shadow"
    request = urllib.request.Request(
        endpoint, data=json.dumps({"model_uri": model_uri}).encode(), method="POST",
        headers={"Content-Type": "application/json", API_KEY_HEADER: api_key})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise RetrainError(f"POST {endpoint} answered HTTP {e.code}: {detail or e.reason}"
                           + (" (check the API key)" if e.code in (401, 403) else "")) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RetrainError(f"cannot reach the server at {url} to start the shadow: {reason}") from None
    try:
        answer = json.loads(body) if body else {}
    except json.JSONDecodeError:
        answer = {"text": body.decode(errors="replace")[:500]}
    return {"status": status, "response": answer}
