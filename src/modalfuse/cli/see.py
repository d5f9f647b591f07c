"""Commands that let people see the data and the model: `modalfuse eda` and `modalfuse explain`.

Thin Typer wrappers over `modalfuse.eda.report` and `modalfuse.inference.explain`; registered on the
main app by `register(app)`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from modalfuse.config import Settings
from modalfuse.tracking.source import bundle_for

console = Console()


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def eda(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name under the data dir")]
    = "pokemon",
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: "
                                                  "<reports dir>/eda_<dataset>.html)")] = None,
) -> None:
    """Write the EDA report of a dataset: one self-contained HTML file with embedded plots."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.eda.report import GENERIC, report_summary, write_report

    s = Settings()
    ds = load_dataset(s.dataset_dir(dataset))
    target = out or s.reports_dir / f"eda_{dataset}.html"
    with Progress(console=console) as progress:
        task = progress.add_task("EDA sections", total=len(GENERIC) + 1)

        def step(name: str) -> None:
            progress.update(task, advance=1, description=name.replace("_", " "))

        started = time.perf_counter()
        path = write_report(ds, target, step)
        seconds = time.perf_counter() - started
    info = report_summary(path)
    console.print(f"[green]wrote[/] {path}: {info['sections']} sections, {info['figures']} "
                  f"figures, {info['bytes'] / 1e6:.2f} MB in {seconds:.0f} s (dataset version "
                  f"{ds.version})")


def explain(
    global_: Annotated[bool, typer.Option("--global", help="global importance over a split, as "
                                                           "PNG plots")] = False,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name under the data dir")]
    = "pokemon",
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="model bundle folder "
                                                "(default: the champion, else the latest)")] = None,
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
    import numpy as np

    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.inference.explain import Explainer
    from modalfuse.inference.predictor import Predictor, table_records

    if global_ == (row_id is not None):
        _fail("give exactly one of --global or --id ID")
    if split not in ("test", "train"):
        _fail(f"split must be 'test' or 'train', got {split!r}")
    s = Settings()
    ds = load_dataset(s.dataset_dir(dataset))
    predictor = Predictor.from_path(bundle_for(s, dataset, bundle)[0])
    spec = ds.spec
    splits = load_splits(ds)
    bg = None
    if background > 0:
        # Training rows only: the explained rows (test by default) never serve as reference.
        train_ids = splits.ids("train")
        pick = np.random.default_rng(seed).choice(train_ids, min(background, len(train_ids)),
                                                  replace=False)
        bg_rows = ds.table.set_index(spec.id_column).loc[np.sort(pick)].reset_index()
        bg = (table_records(spec, bg_rows), ds.row_images(bg_rows))
    explainer = Explainer(predictor, permutations=permutations, background=bg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if row_id is not None:
        key = ds.table[spec.id_column].astype(str)
        if row_id not in set(key):
            _fail(f"no row with {spec.id_column} {row_id!r} in {dataset}")
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
        path.write_bytes(e.overlay_png(scale=4))
        console.print(f"image share {e.image_share:.2f}; explained in {seconds:.2f} s "
                      f"({permutations} permutations, background {background} rows); "
                      f"heatmap: {path}")
        return
    ids = splits.ids(split)
    rows = ds.table.set_index(spec.id_column).loc[ids].reset_index()
    records, images = table_records(spec, rows), ds.row_images(rows)
    with Progress(console=console) as progress:
        task = progress.add_task(f"explaining {len(rows)} {split} rows", total=len(rows))
        explanations = explainer.explain_many(records, images, heatmap=False,
                                              progress=lambda: progress.advance(task))
    reference = (f"absent inputs drawn from {background} training rows" if background
                 else "neutral reference")
    paths = global_plots(explanations, rows[spec.target].astype(str).to_numpy(), spec.image_column,
                         predictor.model_version, split, dataset, out_dir, reference)
    for p in paths:
        console.print(f"[green]wrote[/] {p}")


def global_plots(explanations, truth, image_name: str, model_version: str,
                 split: str, dataset: str, out_dir: Path, reference: str = "") -> list[Path]:
    """Two PNGs: mean |contribution| per input, and the image's share per true class."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modalfuse.inference.explain import global_importance

    imp = global_importance(explanations, image_name)["mean_abs_contribution"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(imp) + 1.5))
    colours = ["#d9a400" if n == image_name else "#4a7bb7" for n in imp.index[::-1]]
    ax.barh(imp.index[::-1], imp.to_numpy()[::-1], color=colours)
    ax.set_xlabel("mean |Shapley value| of the predicted class's probability")
    ax.set_title(f"global importance, {len(explanations)} {split} rows; {reference}\n"
                 f"model {model_version}", fontsize=10)
    p1 = out_dir / f"explain_global_{dataset}.png"
    fig.savefig(p1, dpi=90, bbox_inches="tight")
    plt.close(fig)
    share = pd.DataFrame({"class": truth, "image": [e.image_share for e in explanations],
                          "correct": [e.label == c for e, c in zip(explanations, truth, strict=True)]})
    order = share.groupby("class")["image"].median().sort_values().index
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.boxplot([share.loc[share["class"] == c, "image"].to_numpy() for c in order])
    ax.set_xticks(range(1, len(order) + 1), list(order), rotation=60, fontsize=8)
    ax.set_ylabel("image share of the explanation")
    ax.axhline(float(share["image"].median()), color="#d9a400", lw=1, ls="--")
    ax.set_title(f"image vs table: share owed to the image, per true class (median "
                 f"{share['image'].median():.2f}; {split} rows)", fontsize=10)
    p2 = out_dir / f"explain_modality_{dataset}.png"
    fig.savefig(p2, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return [p1, p2]


def register(app: typer.Typer) -> None:
    app.command("eda")(eda)
    app.command("explain")(explain)
