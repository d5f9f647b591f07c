"""Stage 7, optimization: `modalfuse optimize quantize/prune/distill/all/select/study` and
`modalfuse bench models`, which measures every variant through the same Predictor.

Thin Typer wrappers over `modalfuse.optimize`; ONNX Runtime and torch are imported inside.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modalfuse.cli.common import (
    DatasetOpt,
    bench_app,
    console,
    fail,
    load_data,
    optimize_app,
    settings,
)
from modalfuse.cli.progress import progress_bars


def _fitter(ds, splits, teacher=None):
    """A FoldEngine with the teacher's training recipe and labels (or the default ones)."""
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.folds import FoldEngine, training_labels

    cfg = TrainConfig.model_validate(teacher.meta.get("training", {}).get("config", {})
                                     if teacher is not None else {})
    labels = teacher.labels if teacher is not None else training_labels(ds, splits)
    return FoldEngine(ds, splits, cfg, labels)


def _register(bundle, ds, splits, settings) -> None:
    """Log a variant bundle to MLflow and register it as a challenger."""
    from modalfuse.tracking.registry import log_and_register

    tracked = log_and_register(bundle, ds, splits, settings, run_name=bundle.path.name)
    console.print(f"registered {tracked.registered_name} v{tracked.registered_version} "
                  f"as @{tracked.alias}")


@optimize_app.command("quantize")
def quantize(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="bundle with ONNX networks")],
    out: Annotated[Path, typer.Option(help="folder of the new bundle")],
    mode: Annotated[str, typer.Option(help="static (QDQ, calibrated on training rows) "
                                           "or dynamic")] = "static",
    calibration_rows: Annotated[int, typer.Option(help="training rows to calibrate on")] = 256,
    dataset: DatasetOpt = "",
    register: Annotated[bool, typer.Option(help="log to MLflow and register (challenger)")] = False,
) -> None:
    """INT8-quantize every ONNX network of a bundle into a new bundle."""
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.optimize.quantize import quantize_bundle

    s, ds, splits = load_data(dataset)
    try:
        q = quantize_bundle(load_bundle(bundle), ds, splits, out, mode, calibration_rows)
    except ValueError as e:
        fail(str(e))
    console.print(f"[green]wrote[/] {q.path} ({q.model_version})")
    if register:
        _register(q, ds, splits, s)


@optimize_app.command("prune")
def prune(
    out_root: Annotated[Path, typer.Option(help="folder for fp32/ and pruned<NN>/ bundles")],
    sparsity: Annotated[list[float] | None, typer.Option(help="fraction of trunk channels removed")] = None,
    network: Annotated[str, typer.Option(help="intermediate (image+tabular) or cnn")] = "intermediate",
    finetune_epochs: Annotated[int, typer.Option(help="fine-tuning epochs after pruning")] = 8,
    dataset: DatasetOpt = "",
    seed: int = 42,
) -> None:
    """Train the dense network on the training split, prune its channels, fine-tune, export."""
    from modalfuse.optimize.prune import prune_variants

    _, ds, splits = load_data(dataset)
    try:
        made = prune_variants(_fitter(ds, splits), out_root, network, tuple(sparsity or (0.25, 0.5)),
                              finetune_epochs, seed)
    except ValueError as e:
        fail(str(e))
    for name, b in made.items():
        console.print(f"[green]wrote[/] {name}: {b.path} ({b.meta['training']['params']} parameters)")


@optimize_app.command("distill")
def distill(
    teacher: Annotated[Path, typer.Option(help="teacher bundle (any model, e.g. the stacked ensemble)")],
    out: Annotated[Path, typer.Option(help="folder of the student bundle")],
    epochs: Annotated[int, typer.Option(help="student training epochs")] = 30,
    dataset: DatasetOpt = "",
    seed: int = 42,
) -> None:
    """Distil a teacher into a small fusion network, from its out-of-fold training predictions."""
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.optimize.distill import STUDENT
    from modalfuse.optimize.distill import distill as run

    _, ds, splits = load_data(dataset)
    t = load_bundle(teacher)
    student = run(_fitter(ds, splits, t), t, out, STUDENT.model_copy(update={"epochs": epochs}),
                  seed=seed)
    console.print(f"[green]wrote[/] {student.path} ({student.meta['training']['params']} parameters)")


@optimize_app.command("all")
def optimize_all(
    teacher: Annotated[Path, typer.Option(help="the model to distil (the current best)")],
    out_root: Annotated[Path, typer.Option(help="folder for every variant bundle")],
    sparsity: Annotated[list[float] | None, typer.Option(help="pruning levels")] = None,
    finetune_epochs: int = 8,
    student_epochs: int = 30,
    dataset: DatasetOpt = "",
    seed: int = 42,
) -> None:
    """Every variant in one process (shared folds and features): the dense FP32 network, its
    pruned, INT8 static and INT8 dynamic versions, and the distilled student (+ INT8)."""
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.optimize.distill import STUDENT
    from modalfuse.optimize.distill import distill as run_distill
    from modalfuse.optimize.prune import prune_variants
    from modalfuse.optimize.quantize import quantize_bundle

    _, ds, splits = load_data(dataset)
    t = load_bundle(teacher)
    fitter = _fitter(ds, splits, t)
    made = prune_variants(fitter, out_root, "intermediate", tuple(sparsity or (0.25, 0.5)),
                          finetune_epochs, seed)
    for mode in ("static", "dynamic"):
        made[f"int8_{mode}"] = quantize_bundle(made["fp32"], ds, splits, out_root / f"int8_{mode}", mode)
    made["pruned50_int8"] = quantize_bundle(made["pruned50"], ds, splits,
                                            out_root / "pruned50_int8", "static")
    made["student"] = run_distill(fitter, t, out_root / "student",
                                  STUDENT.model_copy(update={"epochs": student_epochs}), seed=seed)
    made["student_int8"] = quantize_bundle(made["student"], ds, splits, out_root / "student_int8",
                                           "static")
    for name, b in made.items():
        console.print(f"[green]wrote[/] {name}: {b.path}")


@optimize_app.command("select")
def select(
    k: Annotated[int, typer.Option(help="tabular columns to keep")] = 30,
    method: Annotated[str, typer.Option(help="gain (LightGBM) or mutual_info")] = "gain",
    rounds: Annotated[int, typer.Option(help="boosting rounds of the scored model")] = 300,
    out: Annotated[Path | None, typer.Option(help="folder for selection.json/.md "
                                                  "(default: <data>/reports/selection)")] = None,
    doc: Annotated[Path | None, typer.Option(help="also write the table into this markdown doc")] = None,
    dataset: DatasetOpt = "",
    seed: int = 42,
) -> None:
    """In-fold feature selection: grouped CV with vs without top-k tabular columns."""
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.select import selection_cv, to_markdown

    s, ds, splits = load_data(dataset)
    try:
        report = selection_cv(ds, splits, TrainConfig(num_boost_round=rounds, seed=seed), k, method)
    except ValueError as e:
        fail(str(e))
    md = to_markdown(report)
    console.print(md)
    out = out or s.reports_dir / "selection"
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(report, indent=2))
    (out / "selection.md").write_text(md)
    if doc is not None:
        write_doc_table(doc, "feature-selection", f"modalfuse optimize select --k {k} --method "
                        f"{method} --rounds {rounds} --seed {seed}", md)
        console.print(f"[green]updated[/] {doc}")


@optimize_app.command("study")
def study(
    study_name: Annotated[str, typer.Option(help="the study to show")],
    storage: Annotated[str | None, typer.Option(help="Optuna RDB URL (default: sqlite under the "
                                                     "data dir)")] = None,
    doc: Annotated[Path | None, typer.Option(help="also write the table into this markdown doc")] = None,
) -> None:
    """Show the trials of a (possibly shared, still running) tuning study."""
    from modalfuse.training.tune import default_storage, study_markdown

    md = study_markdown(storage or default_storage(settings()), study_name)
    console.print(md)
    if doc is not None:
        write_doc_table(doc, "tune", f"modalfuse optimize study --study-name {study_name}", md)
        console.print(f"[green]updated[/] {doc}")


@bench_app.command("models")
def bench_models(
    variant: Annotated[list[str], typer.Option(help="NAME=BUNDLE_PATH, repeat for every variant "
                                                    "(relative paths: under <data>/models)")],
    baseline: Annotated[str | None, typer.Option(help="variant the ratios are to "
                                                      "(default: the first)")] = None,
    versus: Annotated[list[str] | None, typer.Option(help="A=B: also compare variant A to B "
                                                          "(e.g. student=teacher)")] = None,
    rounds: Annotated[int, typer.Option(help="timing passes over the test split")] = 3,
    batch: Annotated[int, typer.Option(help="batch size of the throughput measurement")] = 64,
    out: Annotated[Path | None, typer.Option(help="folder for bench_models.json/.md "
                                                  "(default: <data>/reports/bench_models)")] = None,
    doc: Annotated[Path | None, typer.Option(help="also write the table into this markdown doc")] = None,
    dataset: DatasetOpt = "",
) -> None:
    """Every variant through the same Predictor on the frozen test split: quality, latency, size."""
    from modalfuse.optimize.bench import bench_models as run
    from modalfuse.optimize.bench import parse_variant, save_report, to_markdown

    s, ds, splits = load_data(dataset)
    try:
        # A relative path that is not there is read under the models folder (docs stay portable).
        variants = [(n, p if p.exists() or p.is_absolute() else s.models_dir / p)
                    for n, p in map(parse_variant, variant)]
        pairs = [tuple(v.split("=", 1)) for v in versus or []]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"--versus takes A=B, got {versus}")
        with progress_bars() as bars:
            report = run(variants, ds, splits, baseline, rounds, batch, pairs,  # type: ignore[arg-type]
                         reporter=bars)
    except ValueError as e:
        fail(str(e))
    t = Table(title=f"bench models (test split, {report['n_test']} rows; ratios to {report['baseline']})")
    for col in ("variant", "macro-F1", "ΔF1 pts", "ECE", "p50 ms", "× p50", "model p50 ms", "× model",
                "rows/s @64", "size KiB"):
        t.add_column(col)
    for r in report["rows"]:
        t.add_row(r["variant"], f"{r['macro_f1']:.3f}", f"{r['macro_f1_delta_pts']:+.1f}",
                  f"{r['ece']:.3f}", f"{r['p50_ms']:.2f}", f"{r['speedup_p50']:.2f}",
                  f"{r['model_p50_ms']:.3f}", f"{r['model_speedup_p50']:.2f}",
                  f"{r['throughput_rps']:.0f}", f"{r['size_bytes'] / 1024:.0f}")
    console.print(t)
    j, md = save_report(report, out or s.reports_dir / "bench_models")
    console.print(f"saved {j} and {md}")
    if doc is not None:
        command = "modalfuse bench models " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        write_doc_table(doc, "bench-models", command, to_markdown(report))
        console.print(f"[green]updated[/] {doc}")


def write_doc_table(doc: Path, marker: str, command: str, table: str) -> None:
    """Replace the generated block between <!-- marker:start/end --> in a doc (append if absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\nGenerated by `{command}`:\n\n{table}{end}"
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    doc.write_text(text)
