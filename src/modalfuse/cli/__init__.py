"""The `modalfuse` command line: a thin Typer layer over the pipeline functions.

One module per stage registers its commands on the root `app` (defined in `common`, so the
command modules import it without a cycle). Heavy imports (torch, sklearn, pandera, MLflow)
happen inside commands, so `modalfuse --help` is fast and `modalfuse serve` and `modalfuse
predict` run on the slim serving install.

How to add a command: write it in the module of its stage (or a new module imported below),
decorated with `@app.command(rich_help_panel=<stage>)` or a group's `.command(...)`; raise a
`ModalfuseError` (or call `fail`) for anything the user can fix.
"""

from __future__ import annotations

import os
import sys
import traceback

# Imported for their side effect: each module registers its commands on `app`. The order is
# the order of the stages, which is the order of the panels of `modalfuse --help`.
# isort: off
from modalfuse.cli import data  # noqa: F401
from modalfuse.cli import training  # noqa: F401
from modalfuse.cli import inference  # noqa: F401
from modalfuse.cli import tracking  # noqa: F401
from modalfuse.cli import serving  # noqa: F401
from modalfuse.cli import monitor  # noqa: F401
from modalfuse.cli import retrain  # noqa: F401
from modalfuse.cli import releases  # noqa: F401
from modalfuse.cli import optimize  # noqa: F401
from modalfuse.cli import scale  # noqa: F401
from modalfuse.cli import reports  # noqa: F401
# isort: on
from modalfuse.cli.common import app, error_console
from modalfuse.errors import ModalfuseError

__all__ = ["app", "main"]


def main(args: list[str] | None = None) -> None:
    """Run the CLI: a ModalfuseError prints `error: ...` and exits 1; any other exception is a
    bug, reported in one line (the traceback with MODALFUSE_DEBUG=1), exit 2."""
    try:
        # Standalone mode: click still reports usage errors (exit 2) and honours typer.Exit.
        app(args=args, prog_name="modalfuse")
    except Exception as e:  # the one place every error of a command ends up
        raise SystemExit(_report(e)) from None


def _report(e: Exception) -> int:
    """Print what went wrong with a command; return the exit code it ends with."""
    from rich.markup import escape

    # A file the user named that is not there is their error too, whoever noticed it.
    if isinstance(e, ModalfuseError | FileNotFoundError):
        error_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    from modalfuse import __version__

    if os.environ.get("MODALFUSE_DEBUG") == "1":
        traceback.print_exception(e, file=sys.stderr)
    error_console.print(f"modalfuse {__version__} bug: {type(e).__name__}: {escape(str(e))} — "
                        "please report it with the command you ran", highlight=False, soft_wrap=True)
    return 2
