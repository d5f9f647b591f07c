"""Stage 2, training: `modalfuse train`, `modalfuse tune`, `modalfuse ablation` and
`modalfuse report decisions`.

Thin Typer wrappers over `modalfuse.training`; a trained bundle is logged to MLflow and
registered unless tracking is off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modalfuse.cli.common import (
    TRAINING,
    DatasetOpt,
    app,
    console,
    error_console,
    fail,
    load_data,
    print_metrics,
    report_app,
    settings,
)
from modalfuse.cli.progress import progress_bars

if TYPE_CHECKING:
    from modalfuse.config import Settings
    from modalfuse.data.dataset import Dataset
    from modalfuse.data.split import Splits
    from modalfuse.inference.bundle import ModelBundle
    from modalfuse.models.netconfig import NetConfig
    from modalfuse.progress import ProgressReporter
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.folds import FoldEngine

# The baseline; what `modalfuse train` trains unless told otherwise is
# `training.champion.default_recipe()`: the CV champion of docs/ablation.md when its training
# fits the 10-minute budget on two cores (scripts/bench_train.py --record), else this.
DEFAULT_MODEL = "gbm"
# The network epochs of `modalfuse ablation` unless --epochs says otherwise (NetConfig's own
# default, 24, is for one network trained alone): with 6 (what docs/ablation.md was made
# with), the default ablation (every recipe, 22 networks) took 3.5 minutes on a 2-core machine
# (7.3 with 24); the command states its estimate for the machine it runs on before it starts
# (`training.ablation_plan`).
ABLATION_EPOCHS = 6

def recipe_files() -> list[str]:
    """The recipes of `training/recipes/`, by file name, without importing them (the help
    stays fast); a recipe registered from elsewhere is trained by name all the same."""
    import pkgutil

    from modalfuse.training import recipes

    return sorted(m.name for m in pkgutil.iter_modules(recipes.__path__) if not m.name.startswith("_"))


MODEL_OPTION_HELP = ("the recipe to train (default: the CV champion when its training fits the "
                     "10-minute budget, else gbm, the LightGBM baseline; the command says which): "
                     + ", ".join(recipe_files()))


def net_config(image_size: int | None = None, epochs: int | None = None,
               device: str | None = None, checkpoint: Path | None = None) -> NetConfig:
    """NetConfig from command-line options (None keeps the default)."""
    from modalfuse.models.netconfig import NetConfig

    over = {"image_size": image_size, "epochs": epochs, "device": device, "checkpoint": checkpoint}
    return NetConfig.model_validate({k: v for k, v in over.items() if v is not None})


@app.command(rich_help_panel=TRAINING)
def train(
    dataset: DatasetOpt = "",
    out: Annotated[Path | None, typer.Option(help="bundle folder to write")] = None,
    exclude_field: Annotated[list[str] | None, typer.Option(help="input field to leave out")] = None,
    image_stats: Annotated[bool, typer.Option("--image-stats/--no-image-stats",
                                              help="hand-made image statistics as features "
                                                   "(--no-image-stats: tabular features only)")] = True,
    rounds: Annotated[int, typer.Option(help="boosting rounds")] = 300,
    seed: int = 42,
    cv: Annotated[bool, typer.Option("--cv/--no-cv", help="grouped CV on the training split "
                                     "(--no-cv: quick runs; the gate then cannot compare it)")] = True,
    track: Annotated[bool, typer.Option("--track/--no-track", help="log to MLflow and register "
                                        "(--no-track, or MODALFUSE_TRACKING=false: neither)")] = True,
    model: Annotated[str | None, typer.Option(help=MODEL_OPTION_HELP)] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (neural models)")] = "cpu",
    epochs: Annotated[int | None, typer.Option(help="training epochs (neural models)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="local image-trunk weights")] = None,
) -> None:
    """Train a recipe (default: the CV champion when it fits the budget, else gbm) on the
    training split: CV, fit, bundle."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.training.champion import default_recipe
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.train import train as run_train

    if model is None:
        model, why = default_recipe(dataset=dataset)
        console.print(f"training {why}")
    s = settings()
    ds = load_dataset(s.dataset_dir(dataset))
    try:
        cfg = TrainConfig(exclude_fields=exclude_field or [], use_image_stats=image_stats,
                          num_boost_round=rounds, seed=seed, cv=cv, model=model,
                          net=net_config(epochs=epochs, device=device, checkpoint=checkpoint))
        splits = load_splits(ds)
        with progress_bars() as bars:
            bundle = run_train(ds, splits, out or s.default_bundle(dataset), cfg,
                               engine=reporting_engine(ds, splits, cfg, bars))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    print_metrics(bundle.model_version, bundle.metrics)
    console.print(f"bundle: {bundle.path}")
    if s.tracking and track:
        _track_trained(bundle, ds, s)


def reporting_engine(ds: Dataset, splits: Splits, cfg: TrainConfig,
                     reporter: ProgressReporter) -> FoldEngine:
    """The fold engine `train` fits with, reporting image decoding, folds and epochs; the
    config is checked first, so a bad one fails before any image is decoded."""
    from modalfuse.training.folds import FoldEngine, training_labels
    from modalfuse.training.train import check_config

    check_config(ds, cfg)
    return FoldEngine(ds, splits, cfg, training_labels(ds, splits), reporter=reporter)


def _track_trained(bundle: ModelBundle, ds: Dataset, s: Settings) -> None:
    """Log a bundle `modalfuse train` just wrote, register it, and say where it went."""
    from modalfuse.data.split import load_splits
    from modalfuse.tracking.registry import log_and_register
    from modalfuse.tracking.runs import resolve_store

    store = resolve_store(s)
    with console.status("logging the run to MLflow"):
        run = log_and_register(bundle, ds, load_splits(ds), s)
    console.print(f"MLflow run {run.run_id} in {store.tracking_uri}")
    console.print(f"registered [bold]{run.registered_name}[/] version {run.registered_version} "
                  f"as [bold]{run.alias}[/]" + ("" if run.alias == "champion" else
                                               "; compare it with `modalfuse promote`"))


@app.command(rich_help_panel=TRAINING)
def tune(
    time_budget: Annotated[str, typer.Option(help="wall-clock budget: 90s, 10m, 1h, 1d")] = "10m",
    trials: Annotated[int | None, typer.Option(help="stop after this many trials (default: budget)")] = None,
    family: Annotated[list[str] | None, typer.Option(help="model families to search: gbm, "
                                                          "gbm_tabular, intermediate")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna RDB URL shared by workers (default: "
                                                     "sqlite under the data dir)")] = None,
    study_name: Annotated[str | None, typer.Option(help="join this study (workers share it)")] = None,
    out: Annotated[Path | None, typer.Option(help="winner bundle folder")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register",
                                           help="log the winner to MLflow and register it")] = True,
    dataset: DatasetOpt = "",
    seed: int = 42,
) -> None:
    """HPO over model families on the grouped CV folds of the training split; winner -> challenger."""
    from modalfuse.config import parse_duration
    from modalfuse.training.tune import train_winner
    from modalfuse.training.tune import tune as run

    s, ds, splits = load_data(dataset)
    try:
        budget = parse_duration(time_budget)
        with progress_bars() as bars:
            result, _ = run(ds, splits, s, budget, trials, tuple(family or ("gbm", "gbm_tabular")),
                            storage, study_name, seed, track=s.tracking, reporter=bars)
            result = train_winner(result, ds, splits,
                                  out or s.models_dir / ds.spec.name / "tuned", s,
                                  register=s.tracking and register, reporter=bars)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    console.print(f"study {result.study_name} ({result.storage}): {result.n_complete} complete, "
                  f"{result.n_pruned} pruned; best CV macro-F1 {result.best_value:.3f}")
    console.print(f"best: {result.best_params}")
    console.print(f"winner bundle: {result.bundle_path}" +
                  (f", registered {result.registered}" if result.registered else ""))


@app.command(rich_help_panel=TRAINING)
def ablation(
    dataset: DatasetOpt = "",
    model: Annotated[list[str] | None, typer.Option(help="only these models")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for ablation.json and ablation.png "
                                                  "(default: <reports dir>/ablation/<dataset>)")] = None,
    doc: Annotated[Path | None, typer.Option(help="write this markdown doc")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto")] = None,
    epochs: Annotated[int, typer.Option(help="network epochs (sized so the default ablation "
                                              "ends in a time it states first)")] = ABLATION_EPOCHS,
    seed: Annotated[int, typer.Option(help="training seed")] = 42,
) -> None:
    """Train and compare every model (tabular, image, each fusion) on the same folds and test
    split; says first how many models and folds it runs and about how long that takes."""
    from pydantic import ValidationError

    from modalfuse.training.ablation import run_ablation
    from modalfuse.training.ablation_plan import measure_step, plan_ablation
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.nets import DeviceError

    s, ds, splits = load_data(dataset)
    out = out or s.reports_dir / "ablation" / dataset
    try:
        net = net_config(epochs=epochs, device=device)
        cfg = TrainConfig(model="stacking", seed=seed, num_boost_round=300, net=net)
        models = tuple(model) if model else None
        step_s = measure_step(cfg, models)
        error_console.print(f"ablation: {plan_ablation(splits, cfg, models, step_s).summary()}",
                            highlight=False)
        with progress_bars() as bars:
            report = run_ablation(ds, splits, out, cfg, models, reporter=bars, step_s=step_s)
    except (ValueError, DeviceError, ValidationError) as e:
        fail(str(e))
    print_ablation(report)
    console.print(f"saved {out / 'ablation.json'} and {out / 'ablation.png'}")
    if doc is not None:
        _write_ablation_doc(report, doc, out / "ablation.png",
                            _ablation_command(dataset, seed, model, net, doc))
        console.print(f"[green]wrote[/] {doc} and {doc.with_suffix('.png')}")


def _ablation_command(dataset: str, seed: int, models: list[str] | None, net: NetConfig,
                      doc: Path) -> str:
    """The command line that reproduces an ablation doc, for its "Generated by" line."""
    from modalfuse.models.netconfig import NetConfig

    parts = ["modalfuse ablation", f"--dataset {dataset}", f"--seed {seed}"]
    parts += [f"--model {m}" for m in models or []]
    defaults = NetConfig().model_dump()
    parts += [f"--{k} {v}" for k, v in net.model_dump().items()
              if k in ("epochs", "device") and v != defaults[k]]
    return " ".join([*parts, f"--doc {doc}"])


def _write_ablation_doc(report: dict, doc: Path, plot: Path, command: str) -> None:
    """The markdown doc of an ablation, with its plot copied next to it and its numbers as
    JSON beside it (what `modalfuse report build` makes the report's tables from); bundle
    paths are left out of the JSON, which is committed."""
    import json

    from modalfuse.training.ablation import to_markdown

    doc.parent.mkdir(parents=True, exist_ok=True)
    png = doc.with_suffix(".png")
    shutil.copyfile(plot, png)
    trust = plot.with_name("reliability.png")
    trust_png = doc.with_name(doc.stem + "_trust.png")
    if trust.exists():
        shutil.copyfile(trust, trust_png)
    doc.write_text(to_markdown(report, command, png.name,
                               trust_png.name if trust.exists() else None))
    public = {**report, "command": command,
              "results": [{k: v for k, v in r.items() if k != "bundle"} for r in report["results"]]}
    doc.with_suffix(".json").write_text(json.dumps(public, indent=2, default=float))


def print_ablation(report: dict) -> None:
    """The ablation's table: CV and test quality and latency per model, the champion starred."""
    t = Table(title=f"modality ablation ({report['dataset']['name']}, champion on CV: "
                    f"{report['champion']})")
    for col in ("model", "CV acc", "CV macro-F1", "CV ECE", "test acc", "test macro-F1",
                "test ECE", "ms/row 1-row", "ms/row batch"):
        t.add_column(col)
    for r in report["results"]:
        cv, te, lat = r["cv"], r["test"], r["latency"]
        t.add_row(r["model"] + (" *" if r["model"] == report["champion"] else ""),
                  f"{cv['accuracy']['mean']:.3f} ± {cv['accuracy']['sd']:.3f}",
                  f"{cv['macro_f1']['mean']:.3f} ± {cv['macro_f1']['sd']:.3f}",
                  f"{cv['ece']['mean']:.3f} ± {cv['ece']['sd']:.3f}",
                  f"{te['accuracy']:.3f}", f"{te['macro_f1']:.3f}", f"{te['ece']:.3f}",
                  f"{lat['single_ms']:.1f}", f"{lat['batch_ms_per_row']:.2f}")
    console.print(t)


@report_app.command("decisions")
def report_decisions(
    dataset: DatasetOpt = "",
    out: Annotated[Path, typer.Option(help="markdown file to write")] = Path("docs/decisions.md"),
    seed: int = 42,
) -> None:
    """Measure the data and modelling decisions (grouped vs random CV, abilities, image stats)."""
    from modalfuse.training.decisions import measure, to_markdown

    _, ds, splits = load_data(dataset)
    m = measure(ds, splits, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(m, f"modalfuse report decisions --dataset {dataset} --seed {seed}"))
    (out.with_suffix(".json")).write_text(json.dumps(m, indent=2, default=float))
    console.print(f"[green]wrote[/] {out}")
