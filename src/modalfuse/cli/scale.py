"""Scale: the `--engine ray` branch of `modalfuse predict` and `modalfuse bench batch`, the
throughput of the batch engines.

Ray is imported inside the functions, only when the Ray engine runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modalfuse.cli.common import (
    USAGE,
    BundleBriefOpt,
    DatasetOpt,
    bench_app,
    bundle_path,
    console,
    fail,
    settings,
)
from modalfuse.cli.progress import progress_bars

ENGINES = ("local", "ray")


def check_engine(engine: str) -> None:
    """Refuse an engine `modalfuse predict` does not have, naming the valid ones."""
    if engine not in ENGINES:
        fail(f"unknown engine {engine!r}; valid engines: {list(ENGINES)}", USAGE)


def predict_ray(input: str, output: str, images: Path, bundle: Path, address: str | None,
                actors: int, batch_size: int) -> None:
    """Score `input` on Ray (local, or the cluster at `address`) into the Parquet folder."""
    from modalfuse.inference.batch import BatchInputError
    from modalfuse.scale.ray_batch import RayBatchConfig, ray_predict_file

    cfg = RayBatchConfig(address=address, actors=actors, batch_size=batch_size)
    try:
        summary = ray_predict_file(bundle, input, images, output, cfg)
    except (BatchInputError, ValueError) as e:
        fail(str(e))
    where = f"cluster {address}" if address else "a local Ray"
    console.print(f"[green]wrote[/] {output}: {summary['rows']} rows in {summary['files']} "
                  f"Parquet file(s), {summary['errors']} with errors ({where}, {actors} actor(s))")


@bench_app.command("batch")
def bench_batch(
    dataset: DatasetOpt = "",
    bundle: BundleBriefOpt = None,
    rows: Annotated[int, typer.Option(help="rows to score (dataset rows, cycled)")] = 2000,
    chunk_size: Annotated[int, typer.Option(help="rows per Predictor call / Ray batch")] = 256,
    repeats: Annotated[int, typer.Option(help="runs of each in-process measurement (best kept)")] = 3,
    actors: Annotated[int, typer.Option(help="Predictor actors for the Ray engine")] = 2,
    ray_engine: Annotated[bool, typer.Option("--ray/--no-ray", help="also time the Ray engine")] = True,
    out: Annotated[Path | None, typer.Option(help="folder for bench_batch.json and .md "
                                             "(default: <data dir>/reports/bench)")] = None,
) -> None:
    """Rows/s of the local and Ray batch engines as ratios to the in-process Predictor limit."""
    from modalfuse.bench.batch import LABELS, TARGET_LOCAL_RATIO, run_bench, to_markdown

    if rows < 1 or chunk_size < 1 or repeats < 1 or actors < 1:
        fail(f"rows ({rows}), chunk-size ({chunk_size}), repeats ({repeats}) and actors "
             f"({actors}) must all be >= 1", USAGE)
    s = settings()
    path = bundle_path(bundle, dataset, announce=False)
    # Lines, not bars: the local engine draws its own bar while it scores.
    with progress_bars(live=False) as bars:
        report = run_bench(path, s.dataset_dir(dataset), rows, chunk_size, repeats, actors,
                           ray_engine, reporter=bars)
    t = Table(title=f"batch throughput, {rows} rows, model {report['model_version']}")
    for col in ("engine", "seconds", "rows/s", "× limit"):
        t.add_column(col)
    for key, v in report["engines"].items():
        t.add_row(LABELS.get(key, key), f"{v['seconds']:.2f}", f"{v['rows_per_s']:.0f}",
                  f"{v['ratio_to_limit']:.2f}")
    console.print(t)
    folder = out or s.reports_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_batch.json").write_text(json.dumps(report, indent=2))
    (folder / "bench_batch.md").write_text(to_markdown(report))
    mark = "[green]meets[/]" if report["local_meets_target"] else "[red]misses[/]"
    console.print(f"local engine {mark} the target (≥ {TARGET_LOCAL_RATIO}× the limit); "
                  f"wrote {folder / 'bench_batch.json'} and {folder / 'bench_batch.md'}")
