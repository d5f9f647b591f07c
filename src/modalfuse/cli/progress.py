"""The CLI's progress reporter: a rich bar per kind of step (model, fold, epoch, trial, ...) on
stderr, with elapsed time and time left; on a stderr that is not a terminal (a CI log, a pipe)
a plain line when a round starts or ends or the next item starts at the same count (a
model's next stage, the next trial), and at most every `LINE_INTERVAL_S` seconds in between.

Library loops report through `modalfuse.progress.ProgressReporter`; a command opens
`progress_bars()` around the library call and prints its own results after it closes, so
stdout (tables, JSON) never carries a progress line.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from modalfuse.cli.common import error_console

# At most how often a line is printed for a kind between the start and the end of a round.
LINE_INTERVAL_S = 10.0


def clock(seconds: float | None) -> str:
    """`h:mm:ss`, or `-:--:--` when not known."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class KindState:
    """Where one kind of step stands: its last step and when its current round began."""

    name: str
    done: int
    total: int | None
    round_started: float
    stepped: float  # when the last step was reported
    eta_s: float | None = None  # the caller's estimate of the time left, at `stepped`
    task: TaskID | None = None
    last_line: float = -math.inf
    last_shown: tuple[int, str] | None = None

    @property
    def finished(self) -> bool:
        """Every step of the round is done."""
        return self.total is not None and self.done >= self.total

    def seconds_left(self, now: float) -> float | None:
        """The caller's estimate if it gave one, else the round's pace up to the last step times
        the steps left; either counted down from the last step."""
        if self.finished:
            return 0.0
        if self.eta_s is not None:
            left = self.eta_s
        elif self.total is None or self.done <= 0:
            return None
        else:
            left = (self.stepped - self.round_started) * (self.total - self.done) / self.done
        return max(left - (now - self.stepped), 0.0)


class EtaColumn(ProgressColumn):
    """`ETA h:mm:ss` of a bar, counting down between steps."""

    def render(self, task: Task) -> Text:
        """The time left of the kind this bar shows."""
        state: KindState = task.fields["state"]
        return Text(f"ETA {clock(state.seconds_left(time.monotonic()))}", style="progress.remaining")


class RichReporter:
    """A `ProgressReporter` for the terminal: live bars when `console` is a terminal, else lines."""

    def __init__(self, console: Console, live: bool | None = None,
                 interval_s: float = LINE_INTERVAL_S):
        self.console = console
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.kinds: dict[str, KindState] = {}
        self.lock = threading.Lock()  # a step may come from any thread
        self.progress: Progress | None = None
        if console.is_terminal if live is None else live:
            # stdout is the command's own (tables, JSON): only stderr passes above the bars.
            self.progress = Progress(
                TextColumn("[bold]{task.fields[kind]:>7}[/]"), TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=24), TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(), EtaColumn(),
                console=console, transient=True, redirect_stdout=False)

    def on_step(self, kind: str, name: str, done: int, total: int | None,
                eta_s: float | None = None) -> None:
        """Record the step and show it (a bar, or a line when one is due)."""
        now = time.monotonic()
        with self.lock:
            st = self.kinds.get(kind)
            # A round restarts when the count goes back (the next model's folds, the next
            # network's epochs) or the total changes; a new name at the same count does not.
            new_round = st is None or done < st.done or total != st.total
            if st is None:
                st = self.kinds[kind] = KindState(name, done, total, now, now)
            # The next item under way at the same count (a model's next stage, the next trial).
            renamed = st.done == done and st.name != name
            if new_round:
                st.round_started = now
            st.name, st.done, st.total, st.eta_s, st.stepped = name, done, total, eta_s, now
            if self.progress is not None:
                self._draw(kind, st, new_round)
            else:
                self._line(kind, st, now, new_round or renamed)

    def _draw(self, kind: str, st: KindState, new_round: bool) -> None:
        assert self.progress is not None
        count = f"{st.done}/{st.total}" if st.total is not None else str(st.done)
        fields: dict[str, Any] = {"kind": kind, "count": count, "state": st}
        if st.task is None:
            st.task = self.progress.add_task(st.name, total=st.total, completed=st.done, **fields)
        elif new_round:
            self.progress.reset(st.task, total=st.total, completed=st.done, description=st.name,
                                visible=True, **fields)
        # A finished round leaves the screen until its kind starts the next one.
        self.progress.update(st.task, description=st.name, completed=st.done, total=st.total,
                             visible=not st.finished, **fields)

    def _line(self, kind: str, st: KindState, now: float, news: bool) -> None:
        shown = (st.done, st.name)
        if shown == st.last_shown:
            return
        if not (news or st.finished or now - st.last_line >= self.interval_s):
            return
        count = f"{st.done}/{st.total}" if st.total is not None else str(st.done)
        tail = (f"took {clock(now - st.round_started)}" if st.finished else
                f"{clock(now - st.round_started)} elapsed, ETA {clock(st.seconds_left(now))}")
        line = f"[{clock(now - self.started)}] {kind} {count} {st.name} · {tail}"
        self.console.print(Text(line), highlight=False, soft_wrap=True)
        st.last_line, st.last_shown = now, shown


@contextmanager
def progress_bars(console: Console | None = None, live: bool | None = None
                  ) -> Iterator[RichReporter]:
    """A reporter on stderr (or `console`) for the duration of the block; bars vanish after it.
    `live=False` prints lines even on a terminal (where the library draws a bar of its own)."""
    reporter = RichReporter(console or error_console, live)
    if reporter.progress is None:
        yield reporter
        return
    with reporter.progress:
        yield reporter
