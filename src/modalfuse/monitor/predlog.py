"""The prediction log: each scored row (inputs, features, output, model, latency) in SQLite.

Observers run inside the request; they only put the event on a bounded queue, and one
writer thread inserts in batches, so logging costs the request microseconds, not a disk
write. If the queue is full the row is counted as dropped instead of slowing serving.

Retention is that thread's job too, never a request's: at start and every `prune_every_s`
it deletes rows older than `max_age_s`, and whenever the file (with its WAL) outgrows
`max_bytes` it deletes the oldest rows until it is back under `PRUNE_TO` of the limit, then
gives the freed pages back to the disk (incremental vacuum, then a WAL checkpoint).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    features BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS models (
    model_version TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    feature_names TEXT NOT NULL
);
"""

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
        self._queue: queue.Queue[tuple | None] = queue.Queue(max_queue)
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
            db.executescript(SCHEMA)
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
            self._queue.put(None)
            thread.join(timeout)

    def observe(self, event: PredictionEvent) -> None:
        """Predictor observer: queue one tuple per scored row; never blocks, never raises."""
        if self._thread is None:
            self.start()
        batch = event.prepared.batch
        if batch is None:
            return
        feats = np.hstack([batch.tabular, batch.image_stats]).astype(np.float32)
        rid = request_id_var.get()
        ts = time.time()
        per_row_ms = event.latency_s * 1000 / max(1, len(event.prepared.valid))
        for k, row in enumerate(event.prepared.valid):
            p = event.proba[k]
            j = int(np.argmax(p))
            item = (ts, rid, event.model_version, per_row_ms, event.labels[j], float(p[j]),
                    json.dumps(event.records[row], default=str),
                    p.astype(np.float32).tobytes(), feats[k].tobytes(),
                    event.labels)
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                if self.on_drop is not None:
                    self.on_drop()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            if self._prune_due():
                self._prune_logged()
            items: list[tuple] = []
            try:
                first = self._queue.get(timeout=self.flush_every_s)
            except queue.Empty:
                continue
            if first is None:
                stopping = True
            else:
                items.append(first)
            while len(items) < 1000:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
            if items:
                try:
                    self._write(items)
                except sqlite3.Error:
                    log.exception("cannot write %d predictions to the log", len(items))

    def _write(self, items: list[tuple]) -> None:
        with self.connect() as db:
            for it in items:
                version, labels = it[2], it[9]
                if version not in self._known_models:
                    db.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?)",
                               (version, json.dumps(labels), json.dumps(self.feature_names)))
                    self._known_models.add(version)
            db.executemany(
                "INSERT INTO predictions (ts, request_id, model_version, latency_ms, label, "
                "confidence, inputs, proba, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [it[:9] for it in items])
            db.commit()

    # -- retention -----------------------------------------------------------------------
    def size_bytes(self) -> int:
        """The log's size on disk: the database file and its write-ahead log."""
        paths = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(p.stat().st_size for p in paths if p.exists())

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
        except sqlite3.Error:
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
            if old and not for_size:
                self._release_pages(db)
        return PruneResult(old, for_size, self.size_bytes())

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
            rows = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            if used <= target or rows == 0:
                break
            n = min(rows, max(1, -(-(used - target) * rows // used)))
            deleted += db.execute("DELETE FROM predictions WHERE id IN (SELECT id FROM "
                                  "predictions ORDER BY id LIMIT ?)", (n,)).rowcount
            db.commit()
            self._release_pages(db)
        return deleted

    @staticmethod
    def _release_pages(db: sqlite3.Connection) -> None:
        # executescript, since a plain execute frees one page per step of the pragma.
        db.executescript("PRAGMA incremental_vacuum;")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        end = time.time() + timeout
        while not self._queue.empty() and time.time() < end:
            time.sleep(0.02)
        time.sleep(self.flush_every_s + 0.05)

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
            db.executescript(SCHEMA)
            frame = pd.read_sql_query(sql, db, params=args)
            models = {r[0]: (json.loads(r[1]), json.loads(r[2]))
                      for r in db.execute("SELECT * FROM models")}
        return LoggedPredictions(frame.iloc[::-1].reset_index(drop=True), models)


class LoggedPredictions:
    """Logged rows as a frame plus decoders for their feature and probability blobs."""

    def __init__(self, frame: pd.DataFrame, models: dict[str, tuple[list[str], list[str]]]):
        self.frame, self.models = frame, models

    @classmethod
    def empty(cls) -> LoggedPredictions:
        """A frame with the log's columns and no rows."""
        return cls(pd.DataFrame(columns=["id", "ts", "request_id", "model_version", "latency_ms",
                                         "label", "confidence", "inputs", "proba", "features"]),
                   {})

    def __len__(self) -> int:
        return len(self.frame)

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
