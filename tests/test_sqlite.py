"""Every SQLite file of modalfuse is opened by `modalfuse.sqlite.open_sqlite`; each store keeps
its own pragmas (the values here are what each store set before they shared the helper)."""

from __future__ import annotations

import sqlite3

from modalfuse.monitor.predlog.store import LogStore
from modalfuse.monitor.shadowlog import ShadowLog
from modalfuse.serve.jobs import JobStore
from modalfuse.serve.workers import ControlLog


def _state(db: sqlite3.Connection) -> dict[str, object]:
    def pragma(name: str) -> object:
        return db.execute(f"PRAGMA {name}").fetchone()[0]

    return {"auto_vacuum": pragma("auto_vacuum"), "journal_mode": pragma("journal_mode"),
            "journal_size_limit": pragma("journal_size_limit"), "synchronous": pragma("synchronous"),
            "busy_timeout": pragma("busy_timeout"), "isolation_level": db.isolation_level,
            "row_factory": db.row_factory}


def test_each_store_keeps_its_pragmas(tmp_path):
    wal = {"journal_mode": "wal", "busy_timeout": 30000}
    with LogStore(tmp_path / "predictions.db").open().connect() as db:  # auto_vacuum 2: incremental
        assert _state(db) == {**wal, "auto_vacuum": 2, "journal_size_limit": 4000000,
                              "synchronous": 1, "isolation_level": "", "row_factory": None}
    with ShadowLog(tmp_path / "shadow.db").open().connect() as db:
        assert _state(db) == {**wal, "auto_vacuum": 2, "journal_size_limit": -1,
                              "synchronous": 1, "isolation_level": "", "row_factory": None}
    with JobStore(tmp_path / "jobs").open()._connect() as db:  # synchronous 2: FULL
        assert _state(db) == {**wal, "auto_vacuum": 0, "journal_size_limit": -1,
                              "synchronous": 2, "isolation_level": None,
                              "row_factory": sqlite3.Row}
    with ControlLog(tmp_path / "serving" / "control.db")._connect() as db:
        assert _state(db) == {**wal, "auto_vacuum": 0, "journal_size_limit": -1,
                              "synchronous": 2, "isolation_level": "", "row_factory": None}
