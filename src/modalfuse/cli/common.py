"""What every command module of the CLI shares: the root app and its groups, the stage panels,
the one console, the one `fail`, and the options several commands take.

Command modules import the Typers from here and decorate their functions; `modalfuse.cli`
imports the command modules so they register. Nothing here imports a heavy library: `modalfuse
--help` stays fast, and pipeline code is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from modalfuse.config import Settings
    from modalfuse.data.dataset import Dataset
    from modalfuse.data.split import Splits

# The panels of `modalfuse --help`, in pipeline order.
DATA = "1 · Data"
TRAINING = "2 · Training"
INFERENCE = "3 · Inference"
TRACKING = "4 · Tracking"
SERVING = "5 · Serving"
OPERATIONS = "6 · Operations"
OPTIMIZATION = "7 · Optimization & scale"
REPORTS = "Reports"

app = typer.Typer(help="modalfuse: image + tabular classification, end to end.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch, build, import and split datasets.", no_args_is_help=True)
optimize_app = typer.Typer(help="Quantize, prune, distil and select features; measure the effect.",
                           no_args_is_help=True)
report_app = typer.Typer(help="Regenerate the measured documents under docs/ (no subcommand: build).")
# One `bench` group for every benchmark; each area adds its command to it.
bench_app = typer.Typer(help="Benchmarks: measured numbers, saved as JSON + markdown.", no_args_is_help=True)
app.add_typer(data_app, name="data", rich_help_panel=DATA)
app.add_typer(optimize_app, name="optimize", rich_help_panel=OPTIMIZATION)
app.add_typer(report_app, name="report", rich_help_panel=REPORTS)
app.add_typer(bench_app, name="bench", rich_help_panel=REPORTS)

# Exit codes: 1 for an error in the input, the data or the setup (`fail`'s default, and every
# ModalfuseError); 2 for option values that do not fit (as click's own usage errors) and, from
# `main`, for a bug.
USAGE = 2

console = Console()
error_console = Console(stderr=True)



# Commands whose stderr is a stream of JSON log lines: the dataset they chose is not announced
# there in plain text (serve logs the model it loads instead).
LOG_STREAM_COMMANDS = frozenset({"serve"})


def _chosen_dataset(ctx: typer.Context, value: str) -> str:
    """The `--dataset` callback: the name given, else the one `config.choose_dataset` chooses
    (said on stderr, so a command's own output stays clean).

    When none can be chosen the value stays empty and nothing is said: a command that only needs
    a model (`serve --bundle`, a container with MODALFUSE_BUNDLE) goes on, and one that needs the
    dataset gets the error that says how to choose one from `Settings.dataset_dir`."""
    from modalfuse.config import choose_dataset
    from modalfuse.errors import ModalfuseError

    try:
        choice = choose_dataset(settings(), value or None)
    except ModalfuseError:
        return ""
    if choice.reason != "-d" and ctx.info_name not in LOG_STREAM_COMMANDS:
        error_console.print(f"[dim]dataset {choice.name} ({choice.reason})[/]", highlight=False)
    return choice.name


DatasetOpt = Annotated[str, typer.Option(
    "--dataset", "-d", callback=_chosen_dataset, show_default=False,
    help="dataset name under the data dir (default: MODALFUSE_DATASET, else the one `modalfuse "
         "data use` set, else the only dataset there)")]
BundleOpt = Annotated[Path | None, typer.Option("--bundle", "-b",
                                                help="model bundle folder (default: the registry's champion, "
                                                     "else the dataset's latest bundle)")]
# The same option, as the later commands word its help.
BundleBriefOpt = Annotated[Path | None, typer.Option("--bundle", "-b", help="model bundle folder "
                                                     "(default: the champion, else the latest)")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: <message>` in red on stderr and end the command with exit code `code`."""
    error_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings() -> Settings:
    """The settings of this run, read from the environment."""
    from modalfuse.config import Settings

    return Settings()


def load_data(dataset: str) -> tuple[Settings, Dataset, Splits]:
    """The settings, the named dataset (validated) and its frozen splits."""
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits

    s = settings()
    ds = load_dataset(s.dataset_dir(dataset))
    return s, ds, load_splits(ds)


def bundle_path(bundle: Path | None, dataset: str, announce: bool = True) -> Path:
    """--bundle, else MODALFUSE_MODEL_URI/BUNDLE, else the registry's champion, else the latest.

    With `announce`, a default choice prints which model it picked.
    """
    from modalfuse.tracking.source import bundle_for, describe_source

    path, source = bundle_for(settings(), dataset, bundle)
    if bundle is None and announce:
        console.print(f"[dim]{describe_source(source)}[/]", highlight=False)
    return path


def print_metrics(version: str, metrics: dict) -> None:
    """The grouped-CV (mean ± sd) and test metrics of a model, as one table."""
    t = Table(title=f"model {version}")
    for col in ("metric", "grouped CV (mean ± sd)", "test"):
        t.add_column(col)
    cv, test = metrics.get("cv") or {}, metrics.get("test") or {}
    for key in ("accuracy", "macro_f1", "ece", "log_loss"):
        c = cv.get(key)
        t.add_row(key, f"{c['mean']:.3f} ± {c['sd']:.3f}" if c else "-",
                  f"{test[key]:.3f}" if key in test else "-")
    console.print(t)
