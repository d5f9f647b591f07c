"""Operations commands: `modalfuse monitor` (drift + skew report) and `modalfuse bench serve`.

Thin Typer wrappers over `modalfuse.monitor` and `modalfuse.serve.loadbench`; registered on
the main app by `register(app)`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modalfuse.config import Settings
from modalfuse.tracking.source import bundle_for

console = Console()


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def monitor(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name under the data dir")]
    = "pokemon",
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="model bundle folder "
                                                "(default: the champion, else the latest)")] = None,
    hours: Annotated[float | None, typer.Option(help="only predictions of the last N hours")]
    = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: "
                                             "<data dir>/reports/monitoring/<time>)")] = None,
) -> None:
    """Drift (Evidently: fields and predictions) and skew (features) of logged predictions."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.monitor.drift import NoReferenceError, load_or_build_reference
    from modalfuse.monitor.predlog import PredictionLog
    from modalfuse.monitor.report import monitor_report

    s = Settings()
    predictor = Predictor.from_path(bundle_for(s, dataset, bundle)[0])
    try:
        reference = load_or_build_reference(predictor, s.data_dir / "monitoring",
                                            s.dataset_dir(predictor.spec.name))
    except NoReferenceError as e:
        _fail(str(e))
    since = time.time() - hours * 3600 if hours else None
    logged = PredictionLog(s.data_dir / "monitoring" / "predictions.db").read(
        model_version=predictor.model_version, since=since)
    folder = out or s.reports_dir / "monitoring" / time.strftime("%Y%m%d-%H%M%S")
    summary = monitor_report(predictor, reference, logged, folder)
    t = Table(title=f"monitoring, model {predictor.model_version}: {summary['status']}")
    for col in ("check", "result"):
        t.add_column(col)
    t.add_row("rows", f"{summary['serving_rows']} serving vs {summary['reference_rows']} "
                      "training (reference)")
    if summary["serving_rows"]:
        ev = summary["evidently"]
        t.add_row("data drift (Evidently)", f"{ev['drifted_columns']:.0f} drifted columns, share "
                                            f"{ev['share_drifted']:.2f}")
        pd_ = summary["prediction_drift"]
        t.add_row("prediction drift", f"PSI {pd_['psi']:.3f} ({pd_['status']})")
        sk = summary["skew"]
        worst = sk["top"][0]
        t.add_row("feature skew", f"{len(sk['skewed_features'])} features over PSI "
                                  f"{summary['thresholds']['psi_drift']}; worst "
                                  f"{worst['feature']} PSI {worst['psi']:.3f}")
    console.print(t)
    console.print(f"report: {folder}")


def bench_serve(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name under the data dir")]
    = "pokemon",
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="model bundle folder "
                                                "(default: the champion, else the latest)")] = None,
    requests_c1: Annotated[int, typer.Option(help="requests at concurrency 1", min=10)] = 300,
    requests_c16: Annotated[int, typer.Option(help="requests at concurrency 16", min=16)] = 800,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="also load-test the "
                                         "`mlflow models serve` peer")] = True,
    out: Annotated[Path, typer.Option(help="folder for serve.json and serve.md")]
    = Path("docs/benchmarks"),
) -> None:
    """Load-test the HTTP API at concurrency 1 and 16 next to MLflow serving and the Predictor."""
    from modalfuse.serve.loadbench import run_serve_bench, to_markdown

    s = Settings()
    path = bundle_for(s, dataset, bundle)[0]
    with console.status("benchmarking") as status:
        res = run_serve_bench(path, requests_c1=requests_c1, requests_c16=requests_c16,
                              include_mlflow=mlflow,
                              progress=lambda msg: status.update(f"benchmarking: {msg}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    (out / "serve.md").write_text(md)
    t = Table(title=f"bench serve, model {res['model_version']}")
    for col in ("target", "c", "p50 ms", "p99 ms", "req/s", "errors"):
        t.add_column(col)
    for r in res["results"]:
        t.add_row(r["target"], str(r["concurrency"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['throughput_rps']:.0f}", str(r["errors"]))
    console.print(t)
    for key, chk in res["checks"].items():
        mark = "[green]pass[/]" if chk["pass"] else "[red]miss[/]"
        console.print(f"{mark} {key}: {chk['value']:.2f} (target {res['targets'][key]})")
    console.print(f"wrote {out / 'serve.json'} and {out / 'serve.md'}")


def bench_soak(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name under the data dir")]
    = "pokemon",
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="model bundle folder "
                                                "(default: the champion, else the latest)")] = None,
    minutes: Annotated[float, typer.Option(help="how long the load runs", min=0.1)] = 10.0,
    clients: Annotated[int, typer.Option(help="client threads", min=1)] = 4,
    out: Annotated[Path, typer.Option(help="folder for soak.json, soak.md and soak.png")]
    = Path("docs/benchmarks"),
) -> None:
    """Soak the API (predict, batch, jobs; prediction log and retention on) and check for leaks."""
    from modalfuse.serve.soak import plot, run_soak, to_markdown

    s = Settings()
    path = bundle_for(s, dataset, bundle)[0]
    with console.status("soaking") as status:
        res = run_soak(path, minutes=minutes, clients=clients,
                       progress=lambda msg: status.update(f"soaking: {msg}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(res, indent=2))
    (out / "soak.md").write_text(to_markdown(res))
    plot(res, out / "soak.png")
    console.print(to_markdown(res))
    console.print(f"wrote {out / 'soak.json'}, {out / 'soak.md'} and {out / 'soak.png'}")


def register(app: typer.Typer) -> None:
    """`monitor`; `bench serve` is added to the shared `bench` group in cli.py."""
    app.command("monitor")(monitor)
