"""The measured documents: `modalfuse report` (alone: `report build`) rewrites the generated
tables of docs/report.md and its Spanish twin docs/informe.md from the latest measured outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modalfuse.cli.common import DatasetOpt, console, fail, report_app, settings

# What `report build` refreshes when no --path is given; the Spanish one only once it exists.
REPORTS = (Path("docs/report.md"), Path("docs/informe.md"))


@report_app.callback(invoke_without_command=True)
def report_default(ctx: typer.Context) -> None:
    """`modalfuse report` alone rebuilds the tables of docs/report.md and docs/informe.md."""
    if ctx.invoked_subcommand is None:
        report_build()


@report_app.command("build")
def report_build(
    path: Annotated[Path | None, typer.Option(
        help="one report to refresh (default: docs/report.md and docs/informe.md)")] = None,
    lang: Annotated[str | None, typer.Option(
        help="language of the tables: en or es (default: es for informe*.md, else en)")] = None,
    dataset: DatasetOpt = "pokemon",  # the documents under docs/ are measured on the built-in data
) -> None:
    """Rewrite every generated table of the report(s) from the latest measured outputs."""
    from modalfuse.errors import InvalidInput
    from modalfuse.report_tables import Phrases, Sources, build_report, language_of

    if path is not None and not path.exists():
        fail(f"{path} not found; run from the repository root or pass --path")
    paths = [path] if path is not None else [p for p in REPORTS if p.exists()]
    if not paths:
        fail(f"{REPORTS[0]} not found; run from the repository root or pass --path")
    try:
        Phrases(lang or "en")
    except InvalidInput as e:
        fail(str(e))
    for p in paths:
        used = lang or language_of(p)
        done = build_report(p, Sources(settings(), p.parent, dataset), used)
        console.print(f"[green]refreshed[/] {len(done)} tables in {p} ({used}): {', '.join(done)}")
