"""The measured documents: `modalfuse report` (alone: `report build`) rewrites the generated
tables of docs/report.md from the latest measured outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modalfuse.cli.common import DatasetOpt, console, fail, report_app, settings


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
        fail(f"{path} not found; run from the repository root or pass --path")
    done = build_report(path, Sources(settings(), path.parent, dataset))
    console.print(f"[green]refreshed[/] {len(done)} tables in {path}: {', '.join(done)}")
