"""Stage 5, serving: `modalfuse serve` (the HTTP API) and its load tests, `modalfuse bench serve`
and `modalfuse bench soak`.

uvicorn and the API are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modalfuse.cli.common import (
    SERVING,
    BundleBriefOpt,
    BundleOpt,
    DatasetOpt,
    app,
    bench_app,
    bundle_path,
    console,
    settings,
)
from modalfuse.cli.progress import progress_bars

if TYPE_CHECKING:
    from modalfuse.config import Settings
    from modalfuse.tracking.source import ModelChoice


@app.command(rich_help_panel=SERVING)
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    bundle: BundleOpt = None,
    dataset: DatasetOpt = "",
    model_uri: Annotated[str | None, typer.Option(help="serve a registered model, e.g. "
                                                  "models:/DATASET@champion (wins over --bundle)")]
        = None,
    workers: Annotated[int, typer.Option(min=1, max=64, envvar="MODALFUSE_WORKERS",
                                         help="worker processes behind the port (each loads "
                                              "the model; see docs/serving.md, Workers)")] = 1,
) -> None:
    """Start the HTTP API (and its docs at /docs)."""
    import uvicorn

    from modalfuse.serve.app import create_app
    from modalfuse.serve.logging import log_config
    from modalfuse.tracking.source import (
        choose_model,
        describe_source,
        load_choice,
        pinned_settings,
    )

    s = settings()
    # The champion alias decides what answers, never "the last thing trained"; pinning the
    # choice in the settings makes /admin/reload re-resolve the same alias.
    choice = choose_model(s, dataset, model_uri, bundle)
    if workers > 1:
        serve_workers(s, choice, host, port, workers)
        return
    predictor, source = load_choice(s, choice)
    application = create_app(pinned_settings(s, choice), predictor, source)
    served = application.state.model_holder.current
    console.print(f"serving {describe_source(served.source)}", highlight=False)
    console.print(f"modalfuse API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    # The container's logging (serve/logging.py): JSON lines on stderr with request ids; the
    # API's own access line replaces uvicorn's, which would print query strings (secrets).
    uvicorn.run(application, host=host, port=port, log_config=log_config(), access_log=False)


def serve_workers(s: Settings, choice: ModelChoice, host: str, port: int, workers: int) -> None:
    """uvicorn's supervisor with `workers` processes, each building the app from the settings
    pinned here (serve/workers.py says what they share)."""
    import os
    import shutil

    import uvicorn

    from modalfuse.serve.logging import log_config
    from modalfuse.serve.workers import CONTROL_FILE, ControlLog

    # What the workers read at start: the chosen model, how many they are, where their
    # metrics and their control log go (both emptied: a new server starts from nothing).
    if not choice.fallback:
        if choice.uri:
            os.environ["MODALFUSE_MODEL_URI"] = choice.uri
            os.environ.pop("MODALFUSE_BUNDLE", None)
        else:
            os.environ["MODALFUSE_BUNDLE"] = str(choice.bundle)
            os.environ.pop("MODALFUSE_MODEL_URI", None)
    elif choice.bundle is not None:  # no champion yet: every worker starts on the latest bundle
        os.environ["MODALFUSE_BUNDLE"] = str(choice.bundle)
    os.environ["MODALFUSE_WORKERS"] = str(workers)
    serving = s.data_dir / "serving"
    metrics_dir = serving / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    ControlLog(serving / CONTROL_FILE).reset()
    console.print(f"serving {choice.describe()} with {workers} worker processes", highlight=False)
    console.print(f"modalfuse API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    uvicorn.run("modalfuse.serve.asgi:app", factory=True, host=host, port=port, workers=workers,
                log_config=log_config(), access_log=False)


@bench_app.command("serve")
def bench_serve(
    dataset: DatasetOpt = "",
    bundle: Annotated[list[Path] | None, typer.Option(
        "--bundle", "-b", help="model bundle folder, repeatable (default: the champion, else "
                               "the latest)")] = None,
    workers: Annotated[list[int] | None, typer.Option(
        "--workers", min=1, max=64, help="worker processes of each server, repeatable "
                                         "(default: 1 and 2)")] = None,
    requests_c1: Annotated[int, typer.Option(help="requests at concurrency 1", min=10)] = 300,
    requests_c16: Annotated[int, typer.Option(help="requests at concurrency 16", min=16)] = 800,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="also load-test the "
                                         "`mlflow models serve` peer")] = True,
    out: Annotated[Path, typer.Option(help="folder for serve.json and serve.md")]
    = Path("docs/benchmarks"),
) -> None:
    """Load-test the HTTP API at concurrency 1 and 16 next to MLflow serving and the Predictor,
    for each bundle and number of workers."""
    from modalfuse.bench.load import CHECK_NAMES, run_serve_bench, to_markdown

    paths = [bundle_path(b, dataset, announce=False) for b in bundle] if bundle else [
        bundle_path(None, dataset, announce=False)]
    with progress_bars() as bars:
        res = run_serve_bench(paths, workers=workers or [1, 2], requests_c1=requests_c1,
                              requests_c16=requests_c16, include_mlflow=mlflow, reporter=bars)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(res, indent=2))
    (out / "serve.md").write_text(to_markdown(res))
    t = Table(title="bench serve")
    for col in ("model", "target", "workers", "c", "p50 ms", "p99 ms", "req/s", "errors"):
        t.add_column(col)
    for r in res["results"]:
        t.add_row(r["model"], r["target"], str(r["workers"]), str(r["concurrency"]),
                  f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['throughput_rps']:.0f}",
                  str(r["errors"]))
    console.print(t)
    for chk in res["checks"]:
        mark = "[green]pass[/]" if chk["pass"] else "[red]miss[/]"
        where = f"{chk['model']}" + (f", {chk['workers']} workers" if chk["workers"] else "")
        console.print(f"{mark} {CHECK_NAMES[chk['check']][0]} ({where}): {chk['value']:.2f} "
                      f"(target {chk['target']})", highlight=False)
    console.print(f"wrote {out / 'serve.json'} and {out / 'serve.md'}")


@bench_app.command("soak")
def bench_soak(
    dataset: DatasetOpt = "",
    bundle: BundleBriefOpt = None,
    minutes: Annotated[float, typer.Option(help="how long the load runs", min=0.1)] = 10.0,
    clients: Annotated[int, typer.Option(help="client threads", min=1)] = 4,
    out: Annotated[Path, typer.Option(help="folder for soak.json, soak.md and soak.png")]
    = Path("docs/benchmarks"),
) -> None:
    """Soak the API (predict, batch, jobs; prediction log and retention on) and check for leaks."""
    from modalfuse.bench.soak import plot, run_soak, to_markdown

    path = bundle_path(bundle, dataset, announce=False)
    with progress_bars() as bars:
        res = run_soak(path, minutes=minutes, clients=clients, reporter=bars)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(res, indent=2))
    (out / "soak.md").write_text(to_markdown(res))
    plot(res, out / "soak.png")
    console.print(to_markdown(res))
    console.print(f"wrote {out / 'soak.json'}, {out / 'soak.md'} and {out / 'soak.png'}")
