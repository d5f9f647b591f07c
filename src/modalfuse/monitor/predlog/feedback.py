"""The feedback store: true labels of logged predictions, in the `feedback` table of the
prediction log's file.

A row the API scored carries the `prediction_id` it answered, and `POST /v1/feedback` stores
the true label of an id here, synchronously (`FeedbackStore.add`): one label per id,
validated against the labels of the model that made the prediction, all of a request or
nothing. Retention drops the label of a pruned prediction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from modalfuse.errors import InvalidInput
from modalfuse.monitor.predlog.store import LogStore, migrate

# Ids are looked up this many at a time (SQLite caps the parameters of one statement).
LOOKUP_CHUNK = 500

FeedbackStatus = Literal["stored", "unchanged", "replaced", "unknown"]


@dataclass(frozen=True)
class FeedbackOutcome:
    """What happened to one feedback row: stored, unchanged (the same label again), replaced,
    or unknown (no prediction with that id in the log); with the model that made it."""

    prediction_id: str
    label: str
    status: FeedbackStatus
    model_version: str | None = None
    previous_label: str | None = None


class FeedbackError(InvalidInput):
    """Feedback refused as a whole (nothing stored); `errors` maps row index -> message."""

    def __init__(self, errors: dict[int, str]):
        self.errors = errors
        super().__init__("; ".join(f"row {i}: {m}" for i, m in errors.items()))


class FeedbackLabelError(FeedbackError):
    """A label that is not one of the labels of the model that made the prediction."""


class FeedbackConflict(FeedbackError):
    """A different label for a prediction that already has one, without `replace`."""


class FeedbackStore:
    """Stores and validates the true labels of the predictions logged in `store`."""

    def __init__(self, store: LogStore):
        self.store = store

    def add(self, rows: Sequence[tuple[str, str]], replace: bool = False,
            now: float | None = None) -> list[FeedbackOutcome]:
        """Store the true label of each `(prediction_id, label)` row, all or nothing, in one
        transaction; one outcome per row. An id not in the log is `unknown` (nothing stored).

        Raises FeedbackLabelError when a label is not one of its model's labels, and
        FeedbackConflict when an id already has another label and `replace` is false.
        """
        if not self.store.path.exists():
            return [FeedbackOutcome(pid, label, "unknown") for pid, label in rows]
        received = time.time() if now is None else now
        with self.store.connect() as db:
            migrate(db)
            db.execute("BEGIN IMMEDIATE")  # the checks and the writes see one state
            found, existing = self._lookup(db, list(dict.fromkeys(pid for pid, _ in rows)))
            labels = {v: json.loads(lab) for v, lab in db.execute(
                "SELECT model_version, labels FROM models")}
            outcomes = judge_feedback(rows, found, existing, labels, replace)
            writes = {o.prediction_id: o.label for o in outcomes
                      if o.status in ("stored", "replaced")}
            db.executemany(
                "INSERT INTO feedback (prediction_id, label, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (prediction_id) DO UPDATE SET label = excluded.label, "
                "received_at = excluded.received_at",
                [(pid, label, received) for pid, label in writes.items()])
            db.commit()
        return outcomes

    @staticmethod
    def _lookup(db: sqlite3.Connection, ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        # (prediction id -> model version, prediction id -> label it has already), for `ids`.
        found: dict[str, str] = {}
        existing: dict[str, str] = {}
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start:start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute("SELECT prediction_id, model_version FROM predictions "
                                    f"WHERE prediction_id IN ({marks})", chunk).fetchall())
            existing.update(db.execute("SELECT prediction_id, label FROM feedback "
                                       f"WHERE prediction_id IN ({marks})", chunk).fetchall())
        return found, existing


def judge_feedback(rows: Sequence[tuple[str, str]], found: dict[str, str],
                   existing: dict[str, str], labels: dict[str, list[str]],
                   replace: bool) -> list[FeedbackOutcome]:
    """The outcome of each feedback row, in order, given the model version of each known
    prediction id, the labels ids already have and each model's labels; raises
    FeedbackLabelError or FeedbackConflict (a row's message names the value and the rule)."""
    bad: dict[int, str] = {}
    conflicts: dict[int, str] = {}
    current = dict(existing)  # a later row of the same request sees an earlier one
    outcomes: list[FeedbackOutcome] = []
    for i, (pid, label) in enumerate(rows):
        version = found.get(pid)
        if version is None:
            outcomes.append(FeedbackOutcome(pid, label, "unknown"))
            continue
        allowed = labels.get(version, [])
        if label not in allowed:
            bad[i] = (f"label {label!r} is not a label of model {version}, which made "
                      f"prediction {pid}; allowed: {', '.join(allowed)}")
            continue
        before = current.get(pid)
        if before is not None and before != label and not replace:
            conflicts[i] = (f"prediction {pid} already has the label {before!r} and this row "
                            f"gives {label!r}; send \"replace\": true to replace it")
            continue
        status: FeedbackStatus = ("stored" if before is None else
                                  "unchanged" if before == label else "replaced")
        current[pid] = label
        outcomes.append(FeedbackOutcome(pid, label, status, version, before))
    if bad:
        raise FeedbackLabelError(bad)
    if conflicts:
        raise FeedbackConflict(conflicts)
    return outcomes
