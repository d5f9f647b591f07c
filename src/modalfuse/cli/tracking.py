"""Stage 4, tracking and the registry: `modalfuse promote`, `rollback`, `trace`, `card` and
`mlflow-ui`.

MLflow is imported inside the commands, so `modalfuse serve` keeps its slim install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modalfuse.cli.common import (
    TRACKING,
    DatasetOpt,
    app,
    bundle_path,
    console,
    fail,
    load_data,
    settings,
)

if TYPE_CHECKING:
    from modalfuse.config import Settings
    from modalfuse.tracking.registry import PromotionDecision

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="registered model name (default: the dataset's name)")]


@app.command(rich_help_panel=TRACKING)
def promote(
    dataset: DatasetOpt = "",
    model: ModelOpt = None,
    on: Annotated[str, typer.Option(help="what decides: cv (the challenger's and champion's "
                                    "out-of-fold predictions on the same grouped-CV folds) or "
                                    "test (the frozen test split; recorded on the version)")]
        = "cv",
    metric: Annotated[str, typer.Option(help="macro_f1 (cv and test), or with --on test: "
                                        "accuracy, weighted_f1, log_loss or ece")] = "macro_f1",
    margin: Annotated[float, typer.Option(help="how much better the challenger must be (the "
                                          "lower end of the interval, with --on cv)")] = 0.01,
    confidence: Annotated[float, typer.Option(help="--on cv: the bootstrap interval's level")]
        = 0.90,
    resamples: Annotated[int, typer.Option(help="--on cv: bootstrap resamples", min=100)] = 2000,
) -> None:
    """Make the challenger champion only if it beats the champion by MARGIN, chosen on grouped-CV
    out-of-fold predictions (a paired bootstrap); the test split is only reported."""
    from modalfuse.tracking.registry import RegistryError
    from modalfuse.tracking.registry import promote as run_promote

    s, ds, splits = load_data(dataset)
    try:
        d = run_promote(s, model or dataset, ds, splits, metric, margin, on=on,
                        confidence=confidence, resamples=resamples)
    except RegistryError as e:
        fail(str(e))
    if d.challenger:
        _print_candidates(model or dataset, d, ds.version)
    if d.plot:
        console.print(f"per-class comparison: {d.plot}")
    if d.interval:
        iv = d.interval
        console.print(f"macro_f1 gain {iv['gain']:+.4f}, {round(iv['confidence'] * 100)}% interval "
                      f"[{iv['low']:+.4f}, {iv['high']:+.4f}] over {iv['rows']} out-of-fold rows; "
                      f"margin {d.margin}")
    if d.promoted:
        console.print(f"[green]promoted[/] version {d.challenger.version if d.challenger else '?'} "
                      f"to champion: {d.reason}")
    else:
        console.print(f"[yellow]refused[/]: {d.reason}")
        raise typer.Exit(1)


def _print_candidates(name: str, d: PromotionDecision, dataset_version: str) -> None:
    """The challenger's and the champion's metrics side by side, saying which one decides."""
    # Only the gate's metric on the gate's data decides; everything else is shown for context.
    decides = {("cv", "macro_f1"): "out-of-fold (decides)",
               ("test", d.metric): "test (decides, --on test)"}
    t = Table(title=f"{name}: challenger vs champion, dataset {dataset_version}")
    for col in ("metric", "challenger", "champion"):
        t.add_column(col)
    cands = [d.challenger, d.champion]
    t.add_row("version", *[c.version if c else "-" for c in cands])
    keys = ("accuracy", "macro_f1", "weighted_f1", "log_loss", "ece")
    rows = [(f"{k} {decides.get(('cv', k), 'out-of-fold') if d.on == 'cv' else 'out-of-fold'}",
             "cv", k) for k in keys]
    rows += [(f"{k} {decides.get(('test', k), 'test') if d.on == 'test' else 'test (report only)'}",
              "metrics", k) for k in keys]
    for label, where, key in rows:
        vals = [getattr(c, where).get(key) if c else None for c in cands]
        if any(v is not None for v in vals):
            t.add_row(label, *[f"{v:.4f}" if v is not None else "-" for v in vals])
    console.print(t)


@app.command(rich_help_panel=TRACKING)
def rollback(
    dataset: DatasetOpt = "",
    model: ModelOpt = None,
    to: Annotated[str | None, typer.Option(help="version to make champion (default: the one "
                                                 "the current champion replaced)")] = None,
) -> None:
    """Move the champion alias back to the previous champion (or to --to VERSION)."""
    from modalfuse.tracking.registry import RegistryError
    from modalfuse.tracking.registry import rollback as run_rollback

    try:
        old, new = run_rollback(settings(), model or dataset, to)
    except RegistryError as e:
        fail(str(e))
    console.print(f"[green]rolled back[/] {model or dataset}: champion version {old} -> {new}; "
                  "reload the API (POST /admin/reload) to serve it")


@app.command(rich_help_panel=TRACKING)
def trace(
    model_version: Annotated[str, typer.Argument(help="the model_version an API response "
                                                      "carries, e.g. DATASET-lightgbm-0123abcd")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Trace a prediction's model version to its run, code commit, params and data version."""
    from modalfuse.tracking.registry import trace as run_trace

    s = settings()
    found = run_trace(s, model_version)
    if not found:
        fail(f"no registered version has bundle {model_version!r} in the registry "
              f"({_store_uri(s)})")
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for f in found:
        console.print(f"[bold]{f['registered_model']}[/] version {f['version']} "
                      f"(aliases: {', '.join(f['aliases']) or '-'})")
        for key in ("run_id", "experiment_id", "git_commit", "git_dirty", "dataset",
                    "dataset_version", "splits_digest", "dvc_md5"):
            console.print(f"  {key}: {f[key]}")
        for di in f["inputs"]:
            console.print(f"  input {di['name']} digest {di['digest']} from {di['source']}")
        params = ", ".join(f"{k}={v}" for k, v in sorted(f["params"].items())
                           if k.startswith(("train.", "split.")) and ".net." not in k)
        console.print(f"  params: {params}")


@app.command(rich_help_panel=TRACKING)
def card(
    dataset: DatasetOpt = "",
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="bundle folder "
                                                "(default: the champion, else the latest)")] = None,
    slice_field: Annotated[str | None, typer.Option(help="report metrics per value of this "
                                                    "column (default: the spec's slice_field)")]
        = None,
) -> None:
    """Write the model card (model_card.md) of a bundle, scored on the frozen test split."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.tracking.model_card import write_card

    s = settings()
    ds = load_dataset(s.dataset_dir(dataset))
    try:
        path, _ = write_card(load_bundle(bundle_path(bundle, dataset, announce=False)), ds,
                             load_splits(ds), slice_field)
    except ValueError as e:
        fail(str(e))
    console.print(f"[green]wrote[/] {path}")


def _store_uri(s: Settings) -> str:
    """Where the registry lives, for error messages."""
    from modalfuse.tracking.runs import tracking_uri

    return tracking_uri(s)


@app.command("mlflow-ui", rich_help_panel=TRACKING)
def mlflow_ui(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
) -> None:
    """Open the MLflow UI on the embedded store (or MLFLOW_TRACKING_URI's)."""
    from modalfuse.tracking.runs import resolve_store

    store = resolve_store(settings())
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if store.artifact_root:
        store.artifact_root.mkdir(parents=True, exist_ok=True)
        cmd += ["--default-artifact-root", store.artifact_root.as_uri()]
    console.print(f"MLflow UI for {store.tracking_uri} on http://{host}:{port}")
    raise typer.Exit(subprocess.call(cmd, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY":
                                                os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}))
