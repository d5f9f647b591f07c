"""Stage 6, operations: releases beside the champion. `modalfuse shadow-report` (how a shadow
challenger's answers compare with the champion's) and `modalfuse bench shadow` (what a shadow
costs the requests it shadows).

The shadow and canary releases themselves run in the server (`/admin/shadow`, `/admin/canary`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modalfuse.cli.common import (
    OPERATIONS,
    BundleBriefOpt,
    DatasetOpt,
    app,
    bench_app,
    bundle_path,
    console,
    settings,
)
from modalfuse.cli.progress import progress_bars


@app.command("shadow-report", rich_help_panel=OPERATIONS)
def shadow_report_command(
    hours: Annotated[float | None, typer.Option(help="only shadow rows of the last N hours")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of Markdown")]
    = False,
    out: Annotated[Path | None, typer.Option(help="also write shadow_report.json and .md to "
                                             "this folder")] = None,
) -> None:
    """Agreement of the shadow challenger with the champion (per version pair), rows dropped,
    and both models' accuracy on rows with feedback."""
    from modalfuse.monitor.shadowlog import shadow_markdown, shadow_report

    since = time.time() - hours * 3600 if hours else None
    report = shadow_report(settings().data_dir, since=since)
    text = shadow_markdown(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shadow_report.json").write_text(json.dumps(report, indent=2))
        (out / "shadow_report.md").write_text(text)
    if as_json:
        console.print_json(json.dumps(report))
    else:
        console.print(text, highlight=False, markup=False)
    if out is not None:
        console.print(f"wrote {out / 'shadow_report.json'} and {out / 'shadow_report.md'}")


@bench_app.command("shadow")
def bench_shadow(
    dataset: DatasetOpt = "",
    bundle: BundleBriefOpt = None,
    challenger: Annotated[Path | None, typer.Option(help="the shadow's bundle (default: the "
                                                    "served bundle again)")] = None,
    requests: Annotated[int, typer.Option(help="requests per level", min=10)] = 300,
    warmup: Annotated[int, typer.Option(help="warm-up requests per client", min=0)] = 20,
    server: Annotated[bool, typer.Option("--server/--in-process", help="a real uvicorn server, "
                                         "or the app in this process (quicker, noisier)")]
    = True,
    out: Annotated[Path | None, typer.Option(help="folder for bench_shadow.json and .md "
                                             "(default: <data dir>/reports/bench)")] = None,
) -> None:
    """p50/p99 of /v1/predict at c=1 and c=8 without and with a shadow; target: a shadow adds
    at most 10 % to p50."""
    from modalfuse.bench.shadow import run_shadow_bench, shadow_bench_markdown

    path = bundle_path(bundle, dataset, announce=False)
    with progress_bars() as bars:
        res = run_shadow_bench(path, challenger, requests=requests, warmup=warmup,
                               server=server, reporter=bars)
    folder = out or settings().reports_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_shadow.json").write_text(json.dumps(res, indent=2))
    (folder / "bench_shadow.md").write_text(shadow_bench_markdown(res))
    t = Table(title=f"bench shadow ({res['mode']}), model {res['model_version']}")
    for col in ("c", "shadow", "p50 ms", "p99 ms", "req/s", "errors"):
        t.add_column(col)
    for r in res["results"]:
        t.add_row(str(r["concurrency"]), "on" if r["shadow"] else "off", f"{r['p50_ms']:.2f}",
                  f"{r['p99_ms']:.2f}", f"{r['throughput_rps']:.0f}", str(r["errors"]))
    console.print(t)
    for c, v in res["ratios"].items():
        s = res["shadow"].get(c, {})
        console.print(f"c={c}: p50 with / without shadow {v['p50']:.3f}, p99 {v['p99']:.3f} "
                      f"(shadow scored {s.get('scored')}, dropped {s.get('dropped')})")
    tgt = res["target"]
    mark = "[green]met[/]" if tgt["met"] else "[red]not met[/]"
    console.print(f"{mark}: shadow adds ≤ {round((tgt['max_p50_ratio'] - 1) * 100)} % to p50")
    console.print(f"wrote {folder / 'bench_shadow.json'} and {folder / 'bench_shadow.md'}")
