"""Progress of the long loops (ablation models, CV folds, network epochs, tuning trials,
dataset builds, benchmark levels), reported through one small interface.

Library code reports to the `ProgressReporter` it is given and says nothing without one
(`SILENT` is every default): called from Python it stays quiet. The CLI passes a reporter
that draws rich bars on stderr (`modalfuse.cli.progress`); a test passes one that records.

A step has a *kind* (what is counted: `model`, `fold`, `epoch`, `trial`, `image`, ...), a
*name* (which one is under way, in words) and `done` of `total` finished. A loop reports
`done=0` as it starts a round (a reporter may restart that kind's clock), `done` as each item
finishes, and `done == total` at the end. Kinds nest by convention only (an ablation's model
holds folds, a fold holds a network's epochs); a reporter shows each kind as its own line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressReporter(Protocol):
    """Receives the progress of a loop; how to implement one: define `on_step`."""

    def on_step(self, kind: str, name: str, done: int, total: int | None,
                eta_s: float | None = None) -> None:
        """`done` of `total` steps of `kind` are finished (`total` None: not known) and `name`
        is under way. `eta_s`: the caller's own estimate of the seconds left, given where steps
        differ in cost (an ablation's models); without it a reporter may assume equal steps."""


class SilentReporter:
    """The default reporter: reports nothing, so library code is quiet unless asked."""

    def on_step(self, kind: str, name: str, done: int, total: int | None,
                eta_s: float | None = None) -> None:
        """Ignore the step."""


SILENT: ProgressReporter = SilentReporter()


def steps(items: Sequence[T], reporter: ProgressReporter, kind: str,
          name: str | Callable[[T], str]) -> Iterator[T]:
    """Yield `items`, reporting each as a step of `kind` (named by `name`, a text or a function
    of the item): what library code uses instead of rich's `track`."""
    total = len(items)

    def label(item: T) -> str:
        return name(item) if callable(name) else name

    for done, item in enumerate(items):
        reporter.on_step(kind, label(item), done, total)
        yield item
    if total:
        reporter.on_step(kind, label(items[-1]), total, total)
