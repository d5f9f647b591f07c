"""Stage 3, inference: `modalfuse evaluate`, `modalfuse reliability`, `modalfuse predict`,
`modalfuse explain` and `modalfuse example`.

Every command here scores through the one `Predictor` built from a saved bundle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from modalfuse.cli.common import (
    INFERENCE,
    USAGE,
    BundleBriefOpt,
    BundleOpt,
    DatasetOpt,
    app,
    bundle_path,
    console,
    fail,
    load_data,
    print_metrics,
    settings,
)
from modalfuse.cli.progress import progress_bars

if TYPE_CHECKING:
    from modalfuse.data.dataset import Dataset
    from modalfuse.data.split import Splits
    from modalfuse.inference.explain import Explainer


@app.command(rich_help_panel=INFERENCE)
def evaluate(
    dataset: DatasetOpt = "",
    bundle: BundleOpt = None,
    split: Annotated[str, typer.Option(help="test (the frozen split) or train")] = "test",
    out: Annotated[Path | None, typer.Option(help="folder for the confusion matrix and report "
                                                  "(default: <bundle>/evaluation)")] = None,
    metrics_file: Annotated[Path | None, typer.Option(help="also write the metrics as flat "
                                                           "JSON (a DVC metrics file)")] = None,
) -> None:
    """Score a bundle on a split through the Predictor and print its metrics."""
    from modalfuse.inference.evaluate import evaluate as run_eval
    from modalfuse.inference.predictor import Predictor

    _, ds, splits = load_data(dataset)
    path = bundle_path(bundle, dataset)
    predictor = Predictor.from_path(path)
    eval_dir = out or path / "evaluation"
    result = run_eval(predictor, ds, splits.ids(split), eval_dir, split)
    print_metrics(predictor.model_version, {**predictor.bundle.metrics, split: result["metrics"]})
    console.print(f"confusion matrix: {eval_dir / f'confusion_{split}.png'}")
    if metrics_file:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps({split: result["metrics"],
                                            "model_version": predictor.model_version}, indent=2))


@app.command(rich_help_panel=INFERENCE)
def reliability(
    dataset: DatasetOpt = "",
    bundle: BundleOpt = None,
    out: Annotated[Path | None, typer.Option(help="also write the report as JSON here")] = None,
    probes: Annotated[int, typer.Option(help="images per out-of-distribution family")] = 40,
    plot: Annotated[Path | None, typer.Option(help="also draw coverage and OOD scores here "
                                                   "(PNG)")] = None,
) -> None:
    """Trust of a bundle's predictions on the test split: scores with a modality missing,
    conformal coverage and set sizes, OOD flags on images unlike the training images."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.inference.reliability import (
        plot_reliability,
        reliability_markdown,
        reliability_report,
    )

    _, ds, splits = load_data(dataset)
    predictor = Predictor.from_path(bundle_path(bundle, dataset))
    report = reliability_report(predictor, ds, splits.ids("test"), probes_per_family=probes)
    console.print("\n".join(reliability_markdown(report, predictor.model_version)), markup=False)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    if plot:
        plot_reliability(report, plot, f"{predictor.model_version}, test split")
        console.print(f"plot: {plot}")


@app.command(rich_help_panel=INFERENCE)
def predict(
    # str, not Path: with --engine ray these may be URIs (s3://...), which Path would mangle.
    input: Annotated[str, typer.Option("--input", "-i", help="rows to score (.csv or .parquet)")],
    output: Annotated[str, typer.Option("--output", "-o", help="predictions (.parquet or .csv)")],
    images: Annotated[Path, typer.Option(help="folder the image column's file names are in")],
    bundle: BundleOpt = None,
    dataset: DatasetOpt = "",
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
        return predict_ray(input, output, images, bundle_path(bundle, dataset), address,
                           actors, chunk_size)
    predictor = Predictor.from_path(bundle_path(bundle, dataset))
    try:
        with progress_bars() as bars:
            summary = predict_file(predictor, Path(input), images, Path(output),
                                   chunk_size=chunk_size, reporter=bars)
    except BatchInputError as e:
        fail(str(e))
    console.print(f"[green]wrote[/] {output}: {summary['rows']} rows, {summary['errors']} with errors "
                  f"(model {predictor.model_version})")


@app.command(rich_help_panel=INFERENCE)
def explain(
    global_: Annotated[bool, typer.Option("--global", help="global importance over a split, as "
                                                           "PNG plots")] = False,
    dataset: DatasetOpt = "",
    bundle: BundleBriefOpt = None,
    split: Annotated[str, typer.Option(help="rows to explain with --global: test or train")]
    = "test",
    row_id: Annotated[str | None, typer.Option("--id", help="explain this one row of the "
                                                           "dataset (its id)")] = None,
    out_dir: Annotated[Path, typer.Option(help="folder for the PNG plots")] = Path("docs"),
    permutations: Annotated[int, typer.Option(help="permutations of the Shapley estimate")] = 12,
    background: Annotated[int, typer.Option(help="training rows absent inputs are drawn from "
                                                 "(0: the neutral reference the API uses "
                                                 "when its bundle has no background)")] = 8,
    seed: Annotated[int, typer.Option(help="seed of the background sample")] = 0,
) -> None:
    """Explain the model: one row (--id) or global importance plots (--global) in PNG."""
    from modalfuse.inference.explain import Explainer
    from modalfuse.inference.predictor import Predictor

    if global_ == (row_id is not None):
        fail("give exactly one of --global or --id ID", USAGE)
    if split not in ("test", "train"):
        fail(f"split must be 'test' or 'train', got {split!r}", USAGE)
    _, ds, splits = load_data(dataset)
    predictor = Predictor.from_path(bundle_path(bundle, dataset, announce=False))
    explainer = Explainer(predictor, permutations=permutations,
                          background=background_rows(ds, splits, background, seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    described = f"{permutations} permutations, background {background} rows"
    if row_id is not None:
        explain_row(explainer, ds, dataset, row_id, out_dir, described)
    else:
        reference = (f"absent inputs drawn from {background} training rows" if background
                     else "neutral reference")
        explain_split(explainer, ds, splits, split, dataset, out_dir, reference)


def background_rows(ds: Dataset, splits: Splits, size: int, seed: int) -> tuple | None:
    """`size` training rows (records, images) absent inputs are drawn from; None for size 0."""
    import numpy as np

    from modalfuse.inference.predictor import table_records

    if size <= 0:
        return None
    # Training rows only: the explained rows (test by default) never serve as reference.
    train_ids = splits.ids("train")
    pick = np.random.default_rng(seed).choice(train_ids, min(size, len(train_ids)), replace=False)
    rows = ds.table.set_index(ds.spec.id_column).loc[np.sort(pick)].reset_index()
    return table_records(ds.spec, rows), ds.row_images(rows)


def explain_row(explainer: Explainer, ds: Dataset, dataset: str, row_id: str, out_dir: Path,
                described: str) -> None:
    """Explain one row: print its top contributions and write its image heatmap as PNG."""
    from modalfuse.inference.predictor import table_records

    spec = ds.spec
    key = ds.table[spec.id_column].astype(str)
    if row_id not in set(key):
        fail(f"no row with {spec.id_column} {row_id!r} in {dataset}", USAGE)
    row = ds.table[key == row_id]
    started = time.perf_counter()
    e = explainer.explain(table_records(spec, row)[0], ds.row_images(row)[0])
    seconds = time.perf_counter() - started
    t = Table(title=f"{spec.id_column} {row_id}: {e.label} {e.probability:.3f} "
                    f"(base {e.base_value:.3f}), model {e.model_version}")
    for col in ("input", "value", "contribution"):
        t.add_column(col)
    t.add_row(f"{spec.image_column} (image)", "", f"{e.image_contribution:+.4f}")
    for f, v in e.top_contributions(10):
        t.add_row(f, str(e.values.get(f)), f"{v:+.4f}")
    console.print(t)
    path = out_dir / f"explain_{dataset}_{row_id}.png"
    png = e.overlay_png(scale=4)
    if png is not None:
        path.write_bytes(png)
    shown = "undefined (the prediction barely moved)" if e.image_share is None else \
        f"{e.image_share:.2f} (signed: image contribution / (probability - base value))"
    console.print(f"image share {shown}; explained in {seconds:.2f} s "
                  f"({described}); heatmap: {path if png is not None else 'none (no image)'}")


def explain_split(explainer: Explainer, ds: Dataset, splits: Splits, split: str, dataset: str,
                  out_dir: Path, reference: str) -> None:
    """Explain every row of a split and write the global importance plots."""
    from modalfuse.inference.explain_charts import global_plots
    from modalfuse.inference.predictor import table_records

    spec = ds.spec
    rows = ds.table.set_index(spec.id_column).loc[splits.ids(split)].reset_index()
    records, images = table_records(spec, rows), ds.row_images(rows)
    with Progress(console=console) as progress:
        task = progress.add_task(f"explaining {len(rows)} {split} rows", total=len(rows))
        explanations = explainer.explain_many(records, images, heatmap=False,
                                              progress=lambda: progress.advance(task))
    paths = global_plots(explanations, rows[spec.target].astype(str).to_numpy(), spec.image_column,
                         explainer.predictor.model_version, split, dataset, out_dir, reference)
    for p in paths:
        console.print(f"[green]wrote[/] {p}")


@app.command(rich_help_panel=INFERENCE)
def example(
    row: Annotated[str, typer.Argument(help="a row id or display name of the dataset")],
    dataset: DatasetOpt = "",
) -> None:
    """Print a /v1/predict JSON body for one row of the dataset (for curl -d @body.json)."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.inference.predictor import api_body, table_records

    ds = load_dataset(settings().dataset_dir(dataset), validate=False)
    t, spec = ds.table, ds.spec
    match = t[t[spec.id_column].astype(str) == row]
    if match.empty and spec.display_column:
        match = t[t[spec.display_column].astype(str).str.lower() == row.lower()]
    if match.empty:
        fail(f"no row with {spec.id_column} or {spec.display_column or 'name'} {row!r}", USAGE)
    body = api_body(spec, table_records(spec, match)[0],
                    ds.image_bytes(match[spec.image_column].iloc[0]))
    typer.echo(json.dumps(body))
