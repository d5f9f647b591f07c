"""The prediction log: each scored row (inputs, features, output, model, latency) in SQLite,
with the true labels clients send back.

`PredictionLog` is the one object serving and monitoring use; it is composed of the parts,
one module each:

- `store`: the file (`<dir>/predictions.db`), its schema, connections (WAL mode) and the
  queries that read predictions and their feedback back as frames;
- `writer`: the bounded queue requests append to and the one thread that writes it, so
  logging costs a request microseconds, never a disk write;
- `retention`: the age and size limits that thread keeps (pruning, then vacuum);
- `feedback`: the ground truth, `POST /v1/feedback`'s labels, validated and stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from modalfuse.inference.predictor import PredictionEvent
from modalfuse.monitor.predlog.feedback import (
    LOOKUP_CHUNK,
    FeedbackConflict,
    FeedbackError,
    FeedbackLabelError,
    FeedbackOutcome,
    FeedbackStatus,
    FeedbackStore,
    judge_feedback,
)
from modalfuse.monitor.predlog.retention import PRUNE_TO, PruneResult, Retention
from modalfuse.monitor.predlog.store import (
    LABELLED_COLUMNS,
    SCHEMA,
    LabelledPredictions,
    LoggedPredictions,
    LogStore,
    migrate,
)
from modalfuse.monitor.predlog.writer import PredictionWriter

__all__ = [
    "LABELLED_COLUMNS", "LOOKUP_CHUNK", "PRUNE_TO", "SCHEMA", "FeedbackConflict", "FeedbackError",
    "FeedbackLabelError", "FeedbackOutcome", "FeedbackStatus", "FeedbackStore",
    "LabelledPredictions", "LogStore", "LoggedPredictions", "PredictionLog", "PredictionWriter",
    "PruneResult", "Retention", "judge_feedback", "migrate",
]


class PredictionLog:
    """Writes prediction events to `<dir>/predictions.db` and reads them back as frames: the
    file, its writer, its retention and its feedback behind one object."""

    def __init__(self, path: Path, feature_names: list[str] | None = None,
                 max_queue: int = 10_000, flush_every_s: float = 0.25,
                 on_drop: Callable[[], None] | None = None, max_age_s: float | None = None,
                 max_bytes: int | None = None, prune_every_s: float = 60.0):
        self.store = LogStore(path)
        # Retention (None: unlimited); see `retention`.
        self.retention = Retention(self.store, max_age_s, max_bytes, prune_every_s)
        self.writer = PredictionWriter(self.store, self.retention, feature_names, max_queue,
                                       flush_every_s, on_drop)
        self.feedback = FeedbackStore(self.store)

    @property
    def path(self) -> Path:
        """The log's database file."""
        return self.store.path

    def connect(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection to the log database, in WAL mode, closed on exit."""
        return self.store.connect()

    def open(self) -> PredictionLog:
        """Create the database and its tables if needed; returns self."""
        self.store.open()
        return self

    # -- writing -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background writer thread (again, if it stopped)."""
        self.writer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the writer thread, waiting at most `timeout` seconds."""
        self.writer.stop(timeout)

    def observe(self, event: PredictionEvent) -> None:
        """Predictor observer: queue one tuple per scored row; never blocks, never raises."""
        self.writer.observe(event)

    def wait_written(self, timeout: float = 2.0) -> bool:
        """Wait until every row queued before this call is in the file (at most `timeout`
        seconds); True when it is."""
        return self.writer.wait_written(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        self.writer.flush(timeout)

    # -- retention -----------------------------------------------------------------------
    def size_bytes(self) -> int:
        """The log's size on disk: the database file and its write-ahead log."""
        return self.store.size_bytes()

    def prune(self, now: float | None = None) -> PruneResult:
        """Delete rows older than `max_age_s`, then the oldest rows while over `max_bytes`."""
        return self.retention.prune(now)

    # -- reading -------------------------------------------------------------------------
    def read(self, model_version: str | None = None, since: float | None = None,
             limit: int | None = None) -> LoggedPredictions:
        """Logged rows, oldest first: the latest `limit` of them (all by default), of one
        model version and since a time when given."""
        return self.store.read(model_version, since, limit)

    def read_labelled(self, model_version: str | None = None, since: float | None = None,
                      until: float | None = None) -> LabelledPredictions:
        """Logged predictions that have feedback, oldest first, with their true label."""
        return self.store.read_labelled(model_version, since, until)

    def latest_labelled_ts(self, model_version: str | None = None) -> float | None:
        """Prediction time of the newest logged prediction that has feedback (None: none)."""
        return self.store.latest_labelled_ts(model_version)

    def traffic(self, window_s: float, model_version: str | None = None,
                since: float | None = None, until: float | None = None) -> dict[tuple[str, int], int]:
        """Logged predictions per (model version, window index `floor(ts / window_s)`)."""
        return self.store.traffic(window_s, model_version, since, until)

    # -- ground truth --------------------------------------------------------------------
    def add_feedback(self, rows: Sequence[tuple[str, str]], replace: bool = False,
                     now: float | None = None) -> list[FeedbackOutcome]:
        """Store the true label of each `(prediction_id, label)` row, all or nothing; one
        outcome per row (FeedbackStore.add)."""
        return self.feedback.add(rows, replace, now)
