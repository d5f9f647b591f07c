"""The `--engine ray` branch of `modalfuse predict`: runs the Ray batch job and reports it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

ENGINES = ("local", "ray")
console = Console()


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        console.print(f"[bold red]error:[/] unknown engine {engine!r}; "
                      f"valid engines: {list(ENGINES)}")
        raise typer.Exit(2)


def predict_ray(input: str, output: str, images: Path, bundle: Path, address: str | None,
                actors: int, batch_size: int) -> None:
    """Score `input` on Ray (local, or the cluster at `address`) into the Parquet folder."""
    from modalfuse.inference.batch import BatchInputError
    from modalfuse.scale.ray_batch import RayBatchConfig, ray_predict_file

    cfg = RayBatchConfig(address=address, actors=actors, batch_size=batch_size)
    try:
        summary = ray_predict_file(bundle, input, images, output, cfg)
    except (BatchInputError, ValueError) as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    where = f"cluster {address}" if address else "a local Ray"
    console.print(f"[green]wrote[/] {output}: {summary['rows']} rows in {summary['files']} "
                  f"Parquet file(s), {summary['errors']} with errors ({where}, {actors} actor(s))")
