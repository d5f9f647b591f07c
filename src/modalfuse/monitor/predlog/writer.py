"""The prediction log's writer: a bounded queue that requests append to, and the one thread
that writes it to the log's file.

Observers run inside the request; they only append the event to a bounded queue (a deque:
no lock, no wake-up), and one writer thread, waking every `flush_every_s` or when asked to
(`wait_written`), inserts what has gathered in one transaction. Logging so costs the
request microseconds, not a disk write nor a thread switch: a queue that woke the writer on
every row had it take the GIL in the middle of the next request. If the queue is full the
row is counted as dropped instead of slowing serving. Between batches the same thread runs
the log's retention, never a request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from modalfuse.inference.predictor import PredictionEvent
from modalfuse.monitor.context import request_id_var
from modalfuse.monitor.predlog.retention import Retention
from modalfuse.monitor.predlog.store import LogStore

log = logging.getLogger("modalfuse.monitor")


class PredictionWriter:
    """Queues prediction events and writes them, one transaction per batch, to `store` from
    its own thread; `retention` is kept by the same thread."""

    def __init__(self, store: LogStore, retention: Retention,
                 feature_names: list[str] | None = None, max_queue: int = 10_000,
                 flush_every_s: float = 0.25, on_drop: Callable[[], None] | None = None):
        self.store, self.retention = store, retention
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

    def start(self) -> None:
        """Start the background writer thread (again, if it stopped)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.store.open()
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
        with self.store.connect() as db:
            self._serve_queue(db)

    def _serve_queue(self, db: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            self.retention.prune_if_due()
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

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        self.wait_written(timeout)
