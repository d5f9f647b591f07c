"""Retention of the prediction log: rows past their age or over the file's size limit are
deleted, and the freed pages given back to the disk.

It runs on the log's writer thread, never in a request: at start and every `prune_every_s`
it deletes rows older than `max_age_s`, and whenever the file (with its WAL) outgrows
`max_bytes` it deletes the oldest rows until it is back under `PRUNE_TO` of the limit, then
gives the freed pages back to the disk (incremental vacuum, then a WAL checkpoint). Pruning
a prediction drops its feedback too.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from modalfuse.monitor.predlog.store import LogStore

log = logging.getLogger("modalfuse.monitor")

# A log over its size limit is cut to this fraction of it, so pruning is not redone per write.
PRUNE_TO = 0.8


@dataclass(frozen=True)
class PruneResult:
    """Rows one prune deleted (for age, for size) and the log's size after it, in bytes."""

    deleted_old: int
    deleted_for_size: int
    size_bytes: int


class Retention:
    """Age and size limits of the log in `store` (None: unlimited) and the prunes that keep
    them."""

    def __init__(self, store: LogStore, max_age_s: float | None = None,
                 max_bytes: int | None = None, prune_every_s: float = 60.0):
        self.store = store
        self.max_age_s, self.max_bytes, self.prune_every_s = max_age_s, max_bytes, prune_every_s
        self._next_prune = self._last_prune = 0.0  # monotonic times: prune at start

    def prune_if_due(self) -> None:
        """Prune when it is time to, or when the file is over its size limit; a failed prune
        is logged, never raised (the writer thread calls this between batches)."""
        if self._prune_due():
            self._prune_logged()

    def _prune_due(self) -> bool:
        if self.max_age_s is None and self.max_bytes is None:
            return False
        now = time.monotonic()
        if now >= self._next_prune:
            return True
        # Between scheduled prunes a log over its size limit is cut at once (once a second
        # at most, in case something, such as a long reader, keeps it from shrinking).
        return (self.max_bytes is not None and now - self._last_prune >= 1.0
                and self.store.size_bytes() > self.max_bytes)

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
        if not self.store.path.exists():
            return PruneResult(0, 0, 0)
        old = 0
        with self.store.connect() as db:
            if self.max_age_s is not None:
                cutoff = (time.time() if now is None else now) - self.max_age_s
                old = db.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
                db.commit()
            for_size = self._shrink(db) if self.max_bytes is not None else 0
            if old or for_size:
                self._drop_orphan_feedback(db)
            if old and not for_size:
                self._release_pages(db)
        return PruneResult(old, for_size, self.store.size_bytes())

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
        if self.store.size_bytes() <= self.max_bytes:
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
