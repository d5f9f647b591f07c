"""Several worker processes behind one port (`modalfuse serve --workers N`): what they share.

uvicorn's supervisor starts N processes; each builds the app from the MODALFUSE_* settings
that `modalfuse serve` pinned (so every worker loads the same model), and they agree through
the data dir:

- **Prediction log and jobs**: SQLite in WAL mode. Each worker's log writer keeps one
  connection; SQLite serialises their transactions (busy timeout 30 s), so rows are neither
  lost nor interleaved. A job is claimed with a lease in one UPDATE (`JobStore.claim`), so
  exactly one worker scores it.
- **Metrics**: prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, emptied by
  the supervisor before the workers start). `/metrics` on any worker sums every worker's
  series; a worker that exits is marked dead so its in-flight gauge leaves the sum.
- **Admin actions** (`ControlLog`, `serving/control.db`): a reload, or a shadow or canary
  release started or ended, is applied by the worker that got the request, then appended to
  the log; every other worker applies it within `POLL_S`, and the request answers once every
  live worker has (its `workers` field lists each one's model and any error). A worker that
  starts later (uvicorn restarts one that died) replays the log in order, so it serves what
  the others serve.

The per-client rate limits (serve/ratelimit.py) are kept per worker: N workers allow N times
the per-client rate.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modalfuse.sqlite import open_sqlite

log = logging.getLogger("modalfuse.serve")

POLL_S = 0.5  # how often a worker looks for actions it has not applied (and says it is alive)
LIVE_S = 5.0  # a worker that has not reported for this long is not waited for
CONTROL_FILE = "control.db"
T = TypeVar("T")


@dataclass(frozen=True)
class Action:
    """One admin action every worker applies: its order, name and arguments."""

    seq: int
    name: str
    args: dict[str, Any]
    origin: int  # the pid of the worker that got the request (and applied it first)


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker last reported: the last action it applied and the model it serves."""

    pid: int
    applied: int
    model_version: str
    error: str | None
    seen_s_ago: float

    def as_dict(self) -> dict[str, Any]:
        """The status as the admin routes answer it."""
        return {"pid": self.pid, "applied": self.applied, "model_version": self.model_version,
                "error": self.error, "seen_s_ago": round(self.seen_s_ago, 2)}


class ControlLog:
    """The ordered admin actions of one server, and each worker's progress through them."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open_sqlite(self.path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS actions (seq INTEGER PRIMARY KEY "
                       "AUTOINCREMENT, name TEXT NOT NULL, args TEXT NOT NULL, origin INTEGER "
                       "NOT NULL, at REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS workers (pid INTEGER PRIMARY KEY, applied "
                       "INTEGER NOT NULL, model_version TEXT NOT NULL, error TEXT, seen REAL "
                       "NOT NULL)")
            yield db
            db.commit()

    def reset(self) -> None:
        """Start a server's log empty (the supervisor does this before starting workers)."""
        for suffix in ("", "-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        with self._connect():
            pass

    def append(self, name: str, args: dict[str, Any], origin: int) -> int:
        """Add an action; returns its sequence number."""
        with self._connect() as db:
            cur = db.execute("INSERT INTO actions (name, args, origin, at) VALUES (?, ?, ?, ?)",
                             (name, json.dumps(args), origin, time.time()))
            return int(cur.lastrowid or 0)

    def after(self, seq: int) -> list[Action]:
        """The actions after `seq`, in order."""
        with self._connect() as db:
            rows = db.execute("SELECT seq, name, args, origin FROM actions WHERE seq > ? "
                              "ORDER BY seq", (seq,)).fetchall()
        return [Action(int(s), n, json.loads(a), int(o)) for s, n, a, o in rows]

    def report(self, pid: int, applied: int, model_version: str, error: str | None) -> None:
        """A worker's heartbeat: the last action it applied, its model, its last error."""
        with self._connect() as db:
            db.execute("INSERT INTO workers VALUES (?, ?, ?, ?, ?) ON CONFLICT(pid) DO UPDATE "
                       "SET applied = excluded.applied, model_version = excluded.model_version, "
                       "error = excluded.error, seen = excluded.seen",
                       (pid, applied, model_version, error, time.time()))

    def forget(self, pid: int) -> None:
        """A worker that stops is no longer waited for."""
        with self._connect() as db:
            db.execute("DELETE FROM workers WHERE pid = ?", (pid,))

    def workers(self, live_s: float = LIVE_S) -> list[WorkerStatus]:
        """The workers that reported within `live_s` seconds."""
        now = time.time()
        with self._connect() as db:
            rows = db.execute("SELECT pid, applied, model_version, error, seen FROM workers "
                              "WHERE seen >= ? ORDER BY pid", (now - live_s,)).fetchall()
        return [WorkerStatus(int(p), int(a), m, e, now - s) for p, a, m, e, s in rows]

    def wait_applied(self, seq: int, expected: int, timeout_s: float) -> list[WorkerStatus]:
        """Wait (at most `timeout_s`) until `expected` live workers have applied action
        `seq`; returns the live workers as they are then."""
        end = time.monotonic() + timeout_s
        while True:
            live = self.workers()
            if sum(1 for w in live if w.applied >= seq) >= expected or time.monotonic() >= end:
                return live
            time.sleep(POLL_S / 5)


class WorkerSync:
    """One worker's side of the control log: applies the others' actions, broadcasts its own.

    `apply(action)` performs an action on this worker's app (the admin routes' own code) and
    returns the model version served after it; it may raise, which is reported, not fatal.
    """

    def __init__(self, control: ControlLog, workers: int, apply: Callable[[Action], str],
                 model_version: Callable[[], str], poll_s: float = POLL_S):
        self.control, self.expected, self.poll_s = control, workers, poll_s
        self._apply, self._model_version = apply, model_version
        self.pid = os.getpid()
        self.applied = 0
        self.error: str | None = None
        self._lock = threading.Lock()  # one action at a time, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Replay what the others did before this worker started, then follow the log."""
        self.catch_up()
        self._thread = threading.Thread(target=self._run, name="modalfuse-workersync",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following the log and leave the list of live workers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.control.forget(self.pid)
        except sqlite3.Error:
            log.exception("cannot leave the control log")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.catch_up()
            except Exception:  # the follower must outlive a broken read: log it and go on
                log.exception("cannot follow the control log")

    def catch_up(self) -> None:
        """Apply every action after the last one applied, then report."""
        with self._lock:
            for action in self.control.after(self.applied):
                self._run_action(action)
            self.control.report(self.pid, self.applied, self._model_version(), self.error)

    def _run_action(self, action: Action) -> None:
        try:
            self._apply(action)
            self.error = None
        except Exception as e:  # reported in the admin answer; this worker keeps serving
            self.error = f"action {action.seq} ({action.name}): {e}"
            log.warning("worker %d could not apply %s: %s", self.pid, action.name, e)
        self.applied = action.seq

    def perform(self, name: str, args: dict[str, Any], local: Callable[[], T],
                timeout_s: float = 30.0) -> tuple[T, list[dict[str, Any]]]:
        """Run an admin action here (`local`: the route's own code; if it raises, nothing is
        broadcast), record it for the other workers and wait for them to apply it. Returns
        what `local` returned and every live worker's status."""
        with self._lock:
            for action in self.control.after(self.applied):  # theirs first: the same order
                self._run_action(action)
            result = local()
            seq = self.control.append(name, args, self.pid)
            self.applied, self.error = seq, None
            self.control.report(self.pid, seq, self._model_version(), None)
        live = self.control.wait_applied(seq, self.expected, timeout_s)
        return result, [w.as_dict() for w in live]
