"""The prediction log's file: its SQLite schema, how a connection is opened, and the queries
that read logged predictions (and their feedback) back as frames.

One file, `<data dir>/monitoring/predictions.db`, holds the `predictions` table (each scored
row: inputs, features, output, model, latency), the `models` table (each model version's
labels and feature names) and the `feedback` table (true labels by prediction id). Every
connection is in WAL mode with the same pragmas, so the writer thread, retention, feedback and
readers (in this process or another) share the file safely.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.sqlite import open_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT,
    model_version TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    inputs TEXT NOT NULL,
    proba BLOB NOT NULL,
    features BLOB NOT NULL,
    prediction_id TEXT,
    flags TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS models (
    model_version TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    feature_names TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a log file written by an older version up to SCHEMA: tables, the prediction id
    and flags columns (added with ALTER TABLE where missing) and the id's index."""
    db.executescript(SCHEMA)
    columns = {r[1] for r in db.execute("PRAGMA table_info(predictions)")}
    for name in ("prediction_id", "flags"):
        if name in columns:
            continue
        try:
            db.execute(f"ALTER TABLE predictions ADD COLUMN {name} TEXT")
        except sqlite3.OperationalError as e:  # another worker process added it meanwhile
            if "duplicate column" not in str(e):
                raise
    db.execute("CREATE INDEX IF NOT EXISTS predictions_pid ON predictions (prediction_id)")
    db.commit()


class LogStore:
    """The prediction log's SQLite file at `path`: connections, its schema, its size on disk,
    and the queries that read it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def connect(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection to the log database, in WAL mode, closed on exit."""
        # Incremental auto-vacuum for a new file; an old file is converted by the first prune
        # that needs to shrink it. The WAL is truncated to 4 MB.
        return open_sqlite(self.path, auto_vacuum="INCREMENTAL", journal_size_limit=4_000_000,
                           synchronous="NORMAL")

    def open(self) -> LogStore:
        """Create the database and its tables if needed; returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            migrate(db)
        return self

    def size_bytes(self) -> int:
        """The log's size on disk: the database file and its write-ahead log."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):  # SQLite deletes -wal when it closes
                total += p.stat().st_size
        return total

    def read(self, model_version: str | None = None, since: float | None = None,
             limit: int | None = None) -> LoggedPredictions:
        """Logged rows, oldest first: the latest `limit` of them (all by default), of one
        model version and since a time when given."""
        if not self.path.exists():
            return LoggedPredictions.empty()
        where: list[str] = []
        args: list[Any] = []
        if model_version:
            where.append("model_version = ?")
            args.append(model_version)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = "SELECT * FROM predictions" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self.connect() as db:
            migrate(db)
            frame = pd.read_sql_query(sql, db, params=args)
            models = {r[0]: (json.loads(r[1]), json.loads(r[2]))
                      for r in db.execute("SELECT * FROM models")}
        return LoggedPredictions(frame.iloc[::-1].reset_index(drop=True), models)

    def read_labelled(self, model_version: str | None = None, since: float | None = None,
                      until: float | None = None) -> LabelledPredictions:
        """Logged predictions that have feedback, oldest first, with their true label; of one
        model version and from `since` to `until` (prediction time) when given."""
        if not self.path.exists():
            return LabelledPredictions(pd.DataFrame(columns=list(LABELLED_COLUMNS)), {})
        where, args = _time_filter("p.", model_version, since, until)
        sql = ("SELECT p.ts, p.prediction_id, p.model_version, p.label, p.proba, "
               "f.label AS true_label, f.received_at FROM feedback f JOIN predictions p "
               "ON p.prediction_id = f.prediction_id" + where + " ORDER BY p.ts, p.id")
        with self.connect() as db:
            migrate(db)
            frame = pd.read_sql_query(sql, db, params=args)
            labels = {v: json.loads(lab) for v, lab in db.execute(
                "SELECT model_version, labels FROM models")}
        return LabelledPredictions(frame, labels)

    def latest_labelled_ts(self, model_version: str | None = None) -> float | None:
        """Prediction time of the newest logged prediction that has feedback (None: none)."""
        if not self.path.exists():
            return None
        where, args = _time_filter("p.", model_version, None, None)
        with self.connect() as db:
            migrate(db)
            row = db.execute("SELECT MAX(p.ts) FROM feedback f JOIN predictions p ON "
                             "p.prediction_id = f.prediction_id" + where, args).fetchone()
        return None if row[0] is None else float(row[0])

    def traffic(self, window_s: float, model_version: str | None = None,
                since: float | None = None, until: float | None = None) -> dict[tuple[str, int], int]:
        """Logged predictions per (model version, window index), a window index being
        `floor(ts / window_s)`: the denominator of the share of traffic labelled."""
        if not self.path.exists():
            return {}
        where, args = _time_filter("", model_version, since, until)
        sql = (f"SELECT model_version, CAST(ts / ? AS INTEGER) AS w, COUNT(*) FROM predictions"
               f"{where} GROUP BY model_version, w")
        with self.connect() as db:
            migrate(db)
            return {(v, int(w)): int(n) for v, w, n in db.execute(sql, [window_s, *args])}


def _time_filter(prefix: str, model_version: str | None, since: float | None,
                 until: float | None) -> tuple[str, list[Any]]:
    # A WHERE clause (or "") over the predictions table and its parameters.
    where: list[str] = []
    args: list[Any] = []
    if model_version:
        where.append(f"{prefix}model_version = ?")
        args.append(model_version)
    if since is not None:
        where.append(f"{prefix}ts >= ?")
        args.append(since)
    if until is not None:
        where.append(f"{prefix}ts < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(where) if where else ""), args


LABELLED_COLUMNS = ("ts", "prediction_id", "model_version", "label", "proba", "true_label",
                    "received_at")


class LabelledPredictions:
    """Logged predictions joined with their feedback, plus each model version's labels."""

    def __init__(self, frame: pd.DataFrame, labels: dict[str, list[str]]):
        self.frame, self.labels = frame, labels

    def __len__(self) -> int:
        return len(self.frame)

    def proba(self, rows: pd.DataFrame | None = None) -> np.ndarray:
        """(n, n_labels) float32 probabilities of `rows` (all rows by default), which must
        come from one model version."""
        rows = self.frame if rows is None else rows
        if not len(rows):
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.frombuffer(b, dtype=np.float32) for b in rows["proba"]])


class LoggedPredictions:
    """Logged rows as a frame plus decoders for their feature and probability blobs."""

    def __init__(self, frame: pd.DataFrame, models: dict[str, tuple[list[str], list[str]]]):
        self.frame, self.models = frame, models

    @classmethod
    def empty(cls) -> LoggedPredictions:
        """A frame with the log's columns and no rows."""
        return cls(pd.DataFrame(columns=["id", "ts", "request_id", "model_version", "latency_ms",
                                         "label", "confidence", "inputs", "proba", "features",
                                         "prediction_id", "flags"]),
                   {})

    def __len__(self) -> int:
        return len(self.frame)

    def of_case(self, mode: str) -> LoggedPredictions:
        """The rows scored from one modality case (`both`, `fields`, `image`); rows logged
        before flags existed count as `both`."""
        if not len(self.frame):
            return self
        flags = self.frame.get("flags", pd.Series([None] * len(self.frame)))
        modes = [json.loads(f).get("modalities", "both") if isinstance(f, str) else "both"
                 for f in flags]
        keep = np.array([m == mode for m in modes], dtype=bool)
        return LoggedPredictions(self.frame[keep].reset_index(drop=True), self.models)

    def input_flags(self) -> dict[str, Any]:
        """What the logged rows were scored from, and the share flagged out of distribution
        (rows logged before flags existed count as `both`, unflagged)."""
        flags = [json.loads(f) if isinstance(f, str) else {}
                 for f in self.frame.get("flags", pd.Series(dtype=object))]
        n = len(flags)
        modes = pd.Series([f.get("modalities", "both") for f in flags], dtype=object)

        def share(key: str) -> float:
            return sum(1 for f in flags if f.get(key)) / n if n else 0.0

        return {"rows": n, "modalities": {str(k): int(v) for k, v in modes.value_counts().items()},
                "ood_image_share": share("ood_image"), "ood_fields_share": share("ood_fields"),
                "ood_any_share": (sum(1 for f in flags if f.get("ood_image") or f.get("ood_fields"))
                                  / n if n else 0.0)}

    def records(self) -> list[dict[str, Any]]:
        """The raw input records of the logged rows."""
        return [json.loads(s) for s in self.frame["inputs"]]

    def features(self) -> np.ndarray:
        """(n, d) float32 feature vectors of the logged rows."""
        if not len(self.frame):
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.frombuffer(b, dtype=np.float32) for b in self.frame["features"]])

    def feature_names(self, model_version: str) -> list[str]:
        """Names of the feature vector logged for `model_version`."""
        return self.models.get(model_version, ([], []))[1]
