"""How modalfuse opens its SQLite files: the prediction log and the shadow tables beside it
(monitor/), the jobs store and the workers' control log (serve/).

Every connection is in WAL mode with a 30 s busy timeout, so writers in several threads or
worker processes wait for each other instead of failing; what else a file needs (incremental
auto-vacuum, a bounded WAL, how hard a commit is flushed, rows by column name) its store asks
for here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

BUSY_TIMEOUT_S = 30.0


@contextmanager
def open_sqlite(path: Path, *, autocommit: bool = False,
                auto_vacuum: Literal["INCREMENTAL"] | None = None,
                journal_size_limit: int | None = None,
                synchronous: Literal["NORMAL", "FULL"] | None = None,
                named_rows: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection to the SQLite file at `path` in WAL mode, closed on exit.

    `autocommit` opens it with sqlite3's `isolation_level=None` (the store writes its own
    BEGIN where it needs a transaction); `auto_vacuum` is set before WAL mode, so that a new
    file gets it; `journal_size_limit` is what the WAL is truncated to (bytes); `synchronous`
    is how hard a commit is flushed (SQLite's default when None); `named_rows` makes rows
    `sqlite3.Row`s."""
    db = (sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None) if autocommit
          else sqlite3.connect(path, timeout=BUSY_TIMEOUT_S))
    try:
        if auto_vacuum is not None:
            db.execute(f"PRAGMA auto_vacuum={auto_vacuum}")
        db.execute("PRAGMA journal_mode=WAL")
        if journal_size_limit is not None:
            db.execute(f"PRAGMA journal_size_limit={int(journal_size_limit)}")
        if synchronous is not None:
            db.execute(f"PRAGMA synchronous={synchronous}")
        if named_rows:
            db.row_factory = sqlite3.Row
        yield db
    finally:
        db.close()
