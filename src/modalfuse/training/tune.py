"""HPO / AutoML with Optuna: model family and hyperparameters chosen on the grouped CV folds of
the training split only; poor trials pruned fold by fold; the study kept in an RDB storage.

Tuning reads a copy of the dataset cut to its training split (`select.training_only`), so
the test split is never even loaded. Every trial is a nested MLflow run under one parent
run; the winner is retrained on the whole training part by `train`, bundled and registered
(it becomes `challenger` when a champion exists).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.config import Settings
from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput, ModelError
from modalfuse.inference.evaluate import classification_metrics
from modalfuse.progress import SILENT, ProgressReporter
from modalfuse.tracking.registry import log_and_register
from modalfuse.tracking.runs import training_run, trial_run
from modalfuse.training import recipes
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import FoldEngine, load_raw, training_labels
from modalfuse.training.select import training_only
from modalfuse.training.train import train

# The recipes with a tunable space.
FAMILIES = recipes.tunable()


def default_storage(settings: Settings) -> str:
    """The Optuna storage URL used when none is given: one SQLite file under the data folder."""
    return f"sqlite:///{(settings.data_dir / 'optuna' / 'studies.db').resolve()}"


def suggest_config(trial: Any, families: tuple[str, ...], base: TrainConfig) -> TrainConfig:
    """The trial's model family and hyperparameters (a define-by-run, conditional space): the
    family is a recipe, and the recipe's own space suggests the rest."""
    family = trial.suggest_categorical("family", list(families))
    recipe = recipes.get(family)
    if recipe.space is None:
        raise InvalidInput(f"recipe {family!r} has no tunable space; choose from {list(FAMILIES)}")
    return recipe.space(trial, base)


@dataclass
class TuneResult:
    """What a tuning study left: the best trial and its config, trial counts, the row ids it saw and
    what was saved or registered from it."""

    study_name: str
    storage: str
    best_value: float
    best_params: dict[str, Any]
    best_config: TrainConfig
    n_complete: int
    n_pruned: int
    parent_run_id: str | None
    ids_seen: set = field(default_factory=set)  # every row id a trial fitted or scored on
    bundle_path: Path | None = None
    registered: str | None = None


class FoldScorer:
    """Scores a TrainConfig fold by fold on the training-only data; records the ids it reads.
    Image decoding, each fold and each network epoch are steps to `reporter`."""

    def __init__(self, ds: Dataset, splits: Splits, reporter: ProgressReporter = SILENT):
        self.ds, self.splits = training_only(ds, splits), splits
        self.labels = sorted(self.ds.table[ds.spec.target].unique())
        self.reporter = reporter
        self.raw = load_raw(self.ds, self.labels, reporter)
        self.ids_seen: set = set()

    def scores(self, cfg: TrainConfig):
        """Yield (fold, macro-F1) as each fold finishes, so poor trials can stop early."""
        engine = FoldEngine(self.ds, self.splits, cfg, self.labels, raw=self.raw,
                            reporter=self.reporter)
        folds = engine.fold_predictions(cfg.model, reporter=self.reporter)
        for k, (fold, rows, proba) in enumerate(folds):
            self.ids_seen.update(self.raw.ids[engine.rows(frozenset({fold}))].tolist())
            self.ids_seen.update(self.raw.ids[rows].tolist())
            yield k, classification_metrics(proba, self.raw.y[rows], self.labels)["macro_f1"]


def tune(ds: Dataset, splits: Splits, settings: Settings, time_budget: float | None = 600.0,
         n_trials: int | None = None, families: tuple[str, ...] = ("gbm", "gbm_tabular"),
         storage: str | None = None, study_name: str | None = None, seed: int = 42,
         base: TrainConfig | None = None, track: bool = True,
         reporter: ProgressReporter = SILENT) -> tuple[TuneResult, Any]:
    """Run (or join) a study; returns its result and the Optuna study. Each trial is a `trial`
    step to `reporter` (time left: what remains of the budget), its folds and epochs too."""
    import optuna

    bad = sorted(set(families) - set(FAMILIES))
    if bad or not families:
        raise InvalidInput(f"unknown model families {bad or families}; choose from {list(FAMILIES)}")
    if time_budget is None and n_trials is None:
        raise InvalidInput("give a time budget or a number of trials, or the study never ends")
    base = base or TrainConfig(seed=seed)
    storage = storage or default_storage(settings)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    study_name = study_name or f"{ds.spec.name}-{'-'.join(families)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=optuna.storages.RDBStorage(storage), direction="maximize",
        load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed),
        # Compare a trial's running CV mean with other trials' at the same fold, from fold 2 on.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    scorer = FoldScorer(ds, splits, reporter)
    started = time.perf_counter()
    trials_done = 0
    leader: tuple[float, int] | None = None  # this call's best CV macro-F1 and its trial

    def seconds_left() -> float | None:
        """The time left: what remains of the budget, sooner if the trials run out first."""
        elapsed = time.perf_counter() - started
        budget = None if time_budget is None else max(time_budget - elapsed, 0.0)
        if n_trials is None or trials_done == 0:
            return budget
        pace = elapsed / trials_done * max(n_trials - trials_done, 0)
        return pace if budget is None else min(pace, budget)

    def objective(trial: optuna.Trial) -> float:
        nonlocal trials_done, leader
        cfg = suggest_config(trial, families, base)
        name = f"#{trial.number} {cfg.model}"
        so_far = f", best so far {leader[0]:.3f} (#{leader[1]})" if leader else ""
        reporter.on_step("trial", name + so_far, trials_done, n_trials, seconds_left())
        outcome = "failed"
        try:
            value = scored_trial(trial, cfg)
            outcome = f"CV macro-F1 {value:.3f}"
            if leader is None or value > leader[0]:
                leader = (value, trial.number)
            return value
        except optuna.TrialPruned:
            outcome = "pruned"
            raise
        finally:
            trials_done += 1
            reporter.on_step("trial", f"{name}: {outcome}", trials_done, n_trials, seconds_left())

    def scored_trial(trial: optuna.Trial, cfg: TrainConfig) -> float:
        if not track:
            return _run_trial(trial, cfg, scorer)
        import mlflow

        with trial_run(trial.params, run_name=f"{study_name}-trial-{trial.number}") as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                value = _run_trial(trial, cfg, scorer)
            except optuna.TrialPruned:
                mlflow.set_tag("optuna.state", "PRUNED")
                pruned = True
            else:
                mlflow.set_tag("optuna.state", "COMPLETE")
                mlflow.log_metric("cv_macro_f1_mean", value)
                pruned = False
        if pruned:
            raise optuna.TrialPruned()
        return value

    parent_id = None
    if track:
        import mlflow

        with training_run(settings, ds.spec.name, run_name=f"tune-{study_name}",
                          tags={"modalfuse.tune.study": study_name, "modalfuse.tune.storage":
                                _redact(storage)}) as parent:
            parent_id = parent.info.run_id
            study.optimize(objective, n_trials=n_trials, timeout=time_budget)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if done:
                mlflow.log_metric("best_cv_macro_f1", study.best_value)
                mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
    else:
        study.optimize(objective, n_trials=n_trials, timeout=time_budget)
    states = [t.state for t in study.trials]
    if optuna.trial.TrialState.COMPLETE not in states:
        raise ModelError(f"no trial of study {study_name!r} completed in the budget "
                           f"({time.perf_counter() - started:.0f}s); give it more time")
    best = study.best_trial
    result = TuneResult(study_name, _redact(storage), float(study.best_value), dict(best.params),
                        suggest_config(optuna.trial.FixedTrial(best.params), families, base),
                        states.count(optuna.trial.TrialState.COMPLETE),
                        states.count(optuna.trial.TrialState.PRUNED), parent_id, scorer.ids_seen)
    return result, study


def _run_trial(trial: Any, cfg: TrainConfig, scorer: FoldScorer) -> float:
    import mlflow
    import optuna

    scores: list[float] = []
    for k, f1 in scorer.scores(cfg):
        scores.append(f1)
        if mlflow.active_run() is not None:
            mlflow.log_metric("cv_fold_macro_f1", f1, step=k)
        trial.report(float(np.mean(scores)), step=k)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return float(np.mean(scores))


def _redact(url: str) -> str:
    # A PostgreSQL URL may carry a password; never log it.
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def train_winner(result: TuneResult, ds: Dataset, splits: Splits, out: Path, settings: Settings,
                 register: bool = True, reporter: ProgressReporter = SILENT) -> TuneResult:
    """Retrain the best configuration on the whole training part, bundle it, register it
    (its image decoding, folds and epochs reported to `reporter`)."""
    cfg = result.best_config.model_copy(update={"cv": True})
    stage = f"retraining the winner ({cfg.model}) on the whole training part"
    reporter.on_step("stage", stage, 0, 1)
    engine = FoldEngine(ds, splits, cfg, training_labels(ds, splits), reporter=reporter)
    bundle = train(ds, splits, out, cfg, engine=engine)
    reporter.on_step("stage", stage, 1, 1)
    result.bundle_path = bundle.path
    if register:
        tracked = log_and_register(bundle, ds, splits, settings, run_name=f"tune-winner-{result.study_name}")
        result.registered = f"{tracked.registered_name} v{tracked.registered_version} @{tracked.alias}"
    return result


def study_markdown(storage: str, study_name: str) -> str:
    """A study's trials as a markdown table: family, state, CV macro-F1, folds scored, params."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    states = [t.state.name for t in trials]
    lines = [f"Study `{study_name}`: {len(trials)} trials, {states.count('COMPLETE')} complete, "
             f"{states.count('PRUNED')} pruned (median pruner on the running per-fold CV mean).",
             "", "| trial | family | state | CV macro-F1 | folds scored | parameters |",
             "|---|---|---|---|---|---|"]
    best = study.best_trial.number if "COMPLETE" in states else None
    for t in trials:
        value = t.value if t.value is not None else (
            list(t.intermediate_values.values())[-1] if t.intermediate_values else None)
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t.params.items() if k != "family")
        mark = " **best**" if t.number == best else ""
        lines.append(f"| {t.number}{mark} | {t.params.get('family')} | {t.state.name} | "
                     f"{'-' if value is None else f'{value:.3f}'} | {len(t.intermediate_values)} | "
                     f"{params} |")
    return "\n".join(lines) + "\n"
