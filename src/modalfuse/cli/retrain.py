"""Stage 6, operations: `modalfuse retrain`, the retraining trigger.

A thin command over `modalfuse.ops.retrain.run_retrain`, which decides (drift of the logged
predictions, live accuracy on labelled feedback, or always), retrains on the current data,
registers the bundle as a challenger, runs the out-of-fold gate and optionally starts it as a
shadow on a running server. This module parses the options, prints what the run says and picks
the exit code.

Exit codes: 0 when it ran as it should, whatever it decided (nothing to do, a bundle that
is already registered, promoted, or refused by the gate: a refusal is a normal outcome and
is recorded); 1 for an error (no data, a failed stage, a server that cannot be reached);
2 for option values that do not fit.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modalfuse.cli.common import OPERATIONS, USAGE, DatasetOpt, app, console, fail, settings
from modalfuse.errors import ModalfuseError
from modalfuse.ops.reporter import Reporter


class Trigger(StrEnum):
    """What makes `modalfuse retrain` retrain (the values of `ops.triggers.TRIGGERS`)."""

    drift = "drift"
    performance = "performance"
    always = "always"


class ConsoleReporter(Reporter):
    """A retrain's progress on the CLI's console: each line printed, a spinner while busy."""

    def say(self, markup: str, highlight: bool = True) -> None:
        """Print the line."""
        console.print(markup, highlight=highlight)

    def busy(self, what: str) -> AbstractContextManager[object]:
        """A spinner with `what` beside it."""
        return console.status(what)


@app.command(rich_help_panel=OPERATIONS)
def retrain(
    trigger: Annotated[Trigger, typer.Option("--if", help="retrain when: drift (the share of "
                                             "drifted columns of the logged predictions exceeds "
                                             "MODALFUSE_ALERT_MAX_DRIFT_SHARE), performance "
                                             "(accuracy on labelled feedback below "
                                             "MODALFUSE_ALERT_MIN_ACCURACY), or always")]
        = Trigger.drift,
    dataset: DatasetOpt = "",
    shadow_url: Annotated[str | None, typer.Option(help="a running server (http://host:8000): "
                                                   "start the new challenger there as a shadow "
                                                   "(POST /admin/shadow)")] = None,
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the server's "
                                             "API key (sent as X-API-Key)")] = "MODALFUSE_API_KEY",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and say what would run; "
                                          "train, register and write nothing")] = False,
    dvc: Annotated[bool, typer.Option("--dvc/--no-dvc", help="rerun the DVC pipeline (`dvc "
                                      "repro`, its data dir); --no-dvc: train params.yaml's model "
                                      "on the current built dataset as a function")] = True,
    repo: Annotated[Path | None, typer.Option(help="the repository with dvc.yaml and params.yaml "
                                              "(default: the current folder)")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml to read the train stage from "
                                                "(default: <repo>/params.yaml)")] = None,
    hours: Annotated[float | None, typer.Option(help="only predictions of the last N hours "
                                                "(--if performance: whole windows; default 7)")] = None,
    margin: Annotated[float, typer.Option(help="the gate: how much the lower end of the "
                                          "macro-F1 gain's interval must clear")] = 0.01,
    confidence: Annotated[float, typer.Option(help="the gate: the bootstrap interval's level")]
        = 0.90,
    resamples: Annotated[int, typer.Option(help="the gate: bootstrap resamples", min=100)] = 2000,
) -> None:
    """Retrain when drift or live performance says so: rerun the pipeline, register the bundle
    as challenger, run the out-of-fold gate, optionally start it as a shadow; writes a summary."""
    from modalfuse.ops.retrain import PipelineMismatch, RetrainOptions, run_retrain

    if shadow_url is not None and not shadow_url.startswith(("http://", "https://")):
        fail(f"--shadow-url {shadow_url!r} is not an http:// or https:// URL", USAGE)
    api_key = os.environ.get(api_key_env, "") if shadow_url else ""
    if shadow_url and not api_key:
        fail(f"--shadow-url needs the server's API key in ${api_key_env} (--api-key-env)")
    options = RetrainOptions(trigger=trigger.value, dataset=dataset, shadow_url=shadow_url,
                             api_key=api_key, dry_run=dry_run, dvc=dvc, repo=repo, params=params,
                             hours=hours, margin=margin, confidence=confidence, resamples=resamples)
    try:
        run_retrain(settings(), options, ConsoleReporter())
    except PipelineMismatch as e:
        fail(str(e), USAGE)
    except ModalfuseError as e:  # recorded in the run's summary when it got that far
        fail(str(e))
