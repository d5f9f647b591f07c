"""The prediction log: each scored row (inputs, features, output, model, latency) in SQLite.

Observers run inside the request; they only put the event on a bounded queue, and one
writer thread inserts in batches, so logging costs the request microseconds, not a disk
write. If the queue is full the row is counted as dropped instead of slowing serving.
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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.predict import PredictionEvent
from modalfuse.serve.logging import request_id_var

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


class PredictionLog:
    """Writes prediction events to `<dir>/predictions.db` and reads them back as frames."""

    def __init__(self, path: Path, feature_names: list[str] | None = None,
                 max_queue: int = 10_000, flush_every_s: float = 0.25,
                 on_drop: Callable[[], None] | None = None):
        self.path = Path(path)
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
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def open(self) -> PredictionLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.executescript(SCHEMA)
        return self

    # -- writing -------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.open()
                self._thread = threading.Thread(target=self._run, name="modalfuse-predlog",
                                                daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
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

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        end = time.time() + timeout
        while not self._queue.empty() and time.time() < end:
            time.sleep(0.02)
        time.sleep(self.flush_every_s + 0.05)

    # -- reading -------------------------------------------------------------------------
    def read(self, model_version: str | None = None, since: float | None = None,
             limit: int | None = None) -> LoggedPredictions:
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
        return cls(pd.DataFrame(columns=["id", "ts", "request_id", "model_version", "latency_ms",
                                         "label", "confidence", "inputs", "proba", "features"]),
                   {})

    def __len__(self) -> int:
        return len(self.frame)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in self.frame["inputs"]]

    def features(self) -> np.ndarray:
        if not len(self.frame):
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.frombuffer(b, dtype=np.float32) for b in self.frame["features"]])

    def feature_names(self, model_version: str) -> list[str]:
        return self.models.get(model_version, ([], []))[1]
