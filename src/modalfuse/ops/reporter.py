"""How an operation tells what it is doing while it runs, without knowing where that goes.

An operation says a line when a step starts or ends and holds `busy` around a long step; the
base `Reporter` stays silent, and the CLI's subclass prints to its console.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext


class Reporter:
    """Hears an operation as it runs; this base says nothing. How to implement one: override
    `say` (print, log) and `busy` (a spinner, a timer).

    Lines are Rich console markup (the CLI's language); text from outside (a reason, a line
    of a subprocess) is already escaped.
    """

    def say(self, markup: str, highlight: bool = True) -> None:
        """One line about what the operation did or found; `highlight=False` for lines whose
        colours are set in the markup and must not be recoloured (numbers, paths)."""

    def busy(self, what: str) -> AbstractContextManager[object]:
        """Held while a long step (a drift check, a training, a registration) runs."""
        return nullcontext()
