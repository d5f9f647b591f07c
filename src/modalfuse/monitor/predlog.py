"""The prediction log: each scored row (inputs, features, output, model, latency) in SQLite.

Observers run inside the request; they only append the event to a bounded queue (a deque:
no lock, no wake-up), and one writer thread, waking every `flush_every_s` or when asked to
(`wait_written`), inserts what has gathered in one transaction. Logging so costs the
request microseconds, not a disk write nor a thread switch: a queue that woke the writer on
every row had it take the GIL in the middle of the next request. If the queue is full the
row is counted as dropped instead of slowing serving.

Retention is that thread's job too, never a request's: at start and every `prune_every_s`
it deletes rows older than `max_age_s`, and whenever the file (with its WAL) outgrows
`max_bytes` it deletes the oldest rows until it is back under `PRUNE_TO` of the limit, then
gives the freed pages back to the disk (incremental vacuum, then a WAL checkpoint).

Ground truth lives beside it: a row the API scored carries the `prediction_id` it answered,
and `POST /v1/feedback` stores the true label of an id in the `feedback` table of the same
file, synchronously (`PredictionLog.add_feedback`): one label per id, validated against the
labels of the model that made the prediction. Pruning a prediction drops its feedback too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from modalfuse.errors import InvalidInput
from modalfuse.inference.predictor import PredictionEvent
from modalfuse.monitor.context import request_id_var

log = logging.getLogger("modalfuse.monitor")

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

# Ids are looked up this many at a time (SQLite caps the parameters of one statement).
LOOKUP_CHUNK = 500


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

# A log over its size limit is cut to this fraction of it, so pruning is not redone per write.
PRUNE_TO = 0.8


@dataclass(frozen=True)
class PruneResult:
    """Rows one prune deleted (for age, for size) and the log's size after it, in bytes."""

    deleted_old: int
    deleted_for_size: int
    size_bytes: int


class PredictionLog:
    """Writes prediction events to `<dir>/predictions.db` and reads them back as frames."""

    def __init__(self, path: Path, feature_names: list[str] | None = None,
                 max_queue: int = 10_000, flush_every_s: float = 0.25,
                 on_drop: Callable[[], None] | None = None, max_age_s: float | None = None,
                 max_bytes: int | None = None, prune_every_s: float = 60.0):
        self.path = Path(path)
        # Retention (None: unlimited); see the module docstring.
        self.max_age_s, self.max_bytes, self.prune_every_s = max_age_s, max_bytes, prune_every_s
        self._next_prune = self._last_prune = 0.0  # monotonic times: prune at start
        # Names of the logged feature vector: the Preprocessor's tabular then image-stat names.
        self.feature_names = list(feature_names or [])
        self.max_queue, self.flush_every_s = max_queue, flush_every_s
        self.on_drop = on_drop
        self._queue: deque[tuple[PredictionEvent, str | None, float] | threading.Event | None] = (
            deque())
        self._wake = threading.Event()  # write now: a marker or the stop is queued
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._known_models: set[str] = set()

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to the log database, in WAL mode, closed on exit."""
        db = sqlite3.connect(self.path, timeout=30)
        try:
            # Before WAL mode is set, so that a new file gets it; an old file is converted by
            # the first prune that needs to shrink it.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA journal_size_limit=4000000")  # the WAL is truncated to this
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def open(self) -> PredictionLog:
        """Create the database and its tables if needed; returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            migrate(db)
        return self

    # -- writing -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background writer thread (again, if it stopped)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.open()
                self._thread = threading.Thread(target=self._run, name="modalfuse-predlog",
                                                daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the writer thread, waiting at most `timeout` seconds."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.append(None)
            self._wake.set()
            thread.join(timeout)

    def observe(self, event: PredictionEvent) -> None:
        """Predictor observer: queue one tuple per scored row; never blocks, never raises."""
        thread = self._thread
        if thread is None or not thread.is_alive():  # not started yet, or it died: (re)start
            self.start()
        if event.prepared.batch is None:
            return
        # The rows are made by the writer thread (`_rows`): the request only appends.
        if len(self._queue) >= self.max_queue:
            if self.on_drop is not None:
                for _ in event.prepared.valid:
                    self.on_drop()
            return
        self._queue.append((event, request_id_var.get(), time.time()))

    @staticmethod
    def _rows(event: PredictionEvent, rid: str | None, ts: float) -> Iterator[tuple]:
        """The log's rows of one observed call (one per scored row)."""
        prep = event.prepared
        batch = prep.batch
        assert batch is not None
        feats = np.hstack([batch.tabular, batch.image_stats]).astype(np.float32)
        per_row_ms = event.latency_s * 1000 / max(1, len(prep.valid))
        ids = event.prediction_ids
        image_flags, field_flags = prep.image_flags(), prep.field_flagged()
        for k, row in enumerate(prep.valid):
            p = event.proba[k]
            j = int(np.argmax(p))
            yield (ts, rid, event.model_version, per_row_ms, event.labels[j], float(p[j]),
                   json.dumps(event.records[row], default=str),
                   p.astype(np.float32).tobytes(), feats[k].tobytes(),
                   ids[row] if ids is not None else None,
                   json.dumps({"modalities": prep.modes[k] if prep.modes else "both",
                               "ood_image": image_flags[k], "ood_fields": field_flags[k]}),
                   event.labels)

    def wait_written(self, timeout: float = 2.0) -> bool:
        """Wait until every row queued before this call is in the file (at most `timeout`
        seconds); True when it is. Feedback calls it, so a label sent right after its
        prediction finds it."""
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        marker = threading.Event()
        self._queue.append(marker)
        self._wake.set()
        return marker.wait(timeout)

    def _run(self) -> None:
        # One connection for the writer's life: opening one per batch made every write end
        # with the last connection's close, which checkpoints and deletes the WAL (a quarter
        # of a single-process server's CPU at c=1, by py-spy).
        with self.connect() as db:
            self._serve_queue(db)

    def _serve_queue(self, db: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            if self._prune_due():
                self._prune_logged()
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            items: list[tuple] = []
            while self._queue:
                nxt = self._queue.popleft()
                if nxt is None:
                    stopping = True
                    break
                if isinstance(nxt, threading.Event):  # wait_written: set once rows before it are in
                    self._write_logged(db, items)
                    items = []
                    nxt.set()
                    continue
                try:
                    items.extend(self._rows(*nxt))
                except Exception:  # a malformed event loses its rows, never the writer
                    log.exception("cannot make prediction-log rows of an event")
                if len(items) >= 1000:
                    self._write_logged(db, items)
                    items = []
            self._write_logged(db, items)

    def _write_logged(self, db: sqlite3.Connection, items: list[tuple]) -> None:
        if not items:
            return
        try:
            self._write(db, items)
        except Exception:  # a failed write loses these rows, never the writer
            db.rollback()
            log.exception("cannot write %d predictions to the log", len(items))

    def _write(self, db: sqlite3.Connection, items: list[tuple]) -> None:
        for it in items:
            version, labels = it[2], it[11]
            if version not in self._known_models:
                db.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?)",
                           (version, json.dumps(labels), json.dumps(self.feature_names)))
                self._known_models.add(version)
        db.executemany(
            "INSERT INTO predictions (ts, request_id, model_version, latency_ms, label, "
            "confidence, inputs, proba, features, prediction_id, flags) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [it[:11] for it in items])
        db.commit()

    # -- retention -----------------------------------------------------------------------
    def size_bytes(self) -> int:
        """The log's size on disk: the database file and its write-ahead log."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):  # SQLite deletes -wal when it closes
                total += p.stat().st_size
        return total

    def _prune_due(self) -> bool:
        if self.max_age_s is None and self.max_bytes is None:
            return False
        now = time.monotonic()
        if now >= self._next_prune:
            return True
        # Between scheduled prunes a log over its size limit is cut at once (once a second
        # at most, in case something, such as a long reader, keeps it from shrinking).
        return (self.max_bytes is not None and now - self._last_prune >= 1.0
                and self.size_bytes() > self.max_bytes)

    def _prune_logged(self) -> None:
        self._last_prune = time.monotonic()
        self._next_prune = self._last_prune + self.prune_every_s
        try:
            res = self.prune()
        except Exception:  # the writer must outlive a failed prune: log it and go on
            log.exception("cannot prune the prediction log")
            return
        if res.deleted_old or res.deleted_for_size:
            log.info("prediction log pruned", extra={
                "deleted_old": res.deleted_old, "deleted_for_size": res.deleted_for_size,
                "size_bytes": res.size_bytes})

    def prune(self, now: float | None = None) -> PruneResult:
        """Delete rows older than `max_age_s`, then the oldest rows while over `max_bytes`.

        Called by the writer thread; safe to call from elsewhere (SQLite serialises writers).
        """
        if not self.path.exists():
            return PruneResult(0, 0, 0)
        old = 0
        with self.connect() as db:
            if self.max_age_s is not None:
                cutoff = (time.time() if now is None else now) - self.max_age_s
                old = db.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
                db.commit()
            for_size = self._shrink(db) if self.max_bytes is not None else 0
            if old or for_size:
                self._drop_orphan_feedback(db)
            if old and not for_size:
                self._release_pages(db)
        return PruneResult(old, for_size, self.size_bytes())

    @staticmethod
    def _drop_orphan_feedback(db: sqlite3.Connection) -> None:
        # Labels of pruned predictions can no longer be joined to anything.
        try:
            db.execute("DELETE FROM feedback WHERE prediction_id NOT IN (SELECT prediction_id "
                       "FROM predictions WHERE prediction_id IS NOT NULL)")
            db.commit()
        except sqlite3.OperationalError:  # a file from before feedback: nothing to drop
            pass

    def _shrink(self, db: sqlite3.Connection) -> int:
        """Delete the oldest rows until the file is under PRUNE_TO of `max_bytes`."""
        assert self.max_bytes is not None
        if self.size_bytes() <= self.max_bytes:
            return 0
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # a file from before retention
            db.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
        self._release_pages(db)
        target = int(self.max_bytes * PRUNE_TO)
        deleted = 0
        for _ in range(4):  # the bytes-per-row estimate is refined on each round
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            used = page_size * (db.execute("PRAGMA page_count").fetchone()[0]
                                - db.execute("PRAGMA freelist_count").fetchone()[0])
            # The shadow's rows share the file: both tables give up the same share of rows,
            # oldest first, so a long shadow cannot push every prediction (and its feedback) out.
            counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in self._tables(db)}
            if used <= target or not any(counts.values()):
                break
            for t, rows in counts.items():
                if not rows:
                    continue
                n = min(rows, max(1, -(-(used - target) * rows // used)))
                gone = db.execute(f"DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} "
                                  "ORDER BY rowid LIMIT ?)", (n,)).rowcount
                if t == "predictions":
                    deleted += gone
            db.commit()
            self._release_pages(db)
        return deleted

    @staticmethod
    def _tables(db: sqlite3.Connection) -> list[str]:
        """The tables whose rows size retention may delete: predictions, and the shadow's."""
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return [t for t in ("predictions", "shadow") if t in names]

    @staticmethod
    def _release_pages(db: sqlite3.Connection) -> None:
        # executescript, since a plain execute frees one page per step of the pragma.
        db.executescript("PRAGMA incremental_vacuum;")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        self.wait_written(timeout)

    # -- reading -------------------------------------------------------------------------
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


    # -- ground truth --------------------------------------------------------------------
    def add_feedback(self, rows: Sequence[tuple[str, str]], replace: bool = False,
                     now: float | None = None) -> list[FeedbackOutcome]:
        """Store the true label of each `(prediction_id, label)` row, all or nothing, in one
        transaction; one outcome per row. An id not in the log is `unknown` (nothing stored).

        Raises FeedbackLabelError when a label is not one of its model's labels, and
        FeedbackConflict when an id already has another label and `replace` is false.
        """
        if not self.path.exists():
            return [FeedbackOutcome(pid, label, "unknown") for pid, label in rows]
        received = time.time() if now is None else now
        with self.connect() as db:
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
