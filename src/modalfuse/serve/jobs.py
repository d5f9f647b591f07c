"""Persistent async batch jobs: a SQLite (WAL) job table, safe inputs, a checkpointed worker.

A job's rows are scored in fixed chunks through `batch.score_frame` (so through the
Predictor of the model served when the worker claimed the job). Each chunk's output is
written to its own file atomically *before* the chunk is recorded as done in the database,
so a worker killed at any instant redoes at most the chunk it was on, and the final result
has exactly one row per input row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from modalfuse.errors import InvalidInput, ModalfuseError
from modalfuse.inference.batch import NO_PARQUET, iter_row_chunks, parquet_available, score_frame
from modalfuse.inference.predictor import Predictor
from modalfuse.inference.safe_csv import write_csv
from modalfuse.inference.uploads import UploadError, UploadLimits, check_table, safe_extract_zip
from modalfuse.serve.state import ModelHolder
from modalfuse.sqlite import open_sqlite

log = logging.getLogger("modalfuse.jobs")

STATES = ("queued", "running", "succeeded", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    table_path TEXT NOT NULL,
    images_dir TEXT NOT NULL,
    total_rows INTEGER NOT NULL,
    chunk_rows INTEGER NOT NULL,
    done_rows INTEGER NOT NULL DEFAULT 0,
    error_rows INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    model_version TEXT NOT NULL,
    model_digest TEXT,
    note TEXT,
    lease_owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_chunks (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""


# What a worker does with a job another model started: leave it for that model, or rescore
# it whole with its own (never a mix: a result's rows all come from one model).
JOB_MODEL_POLICIES = ("rescore", "wait")


class ModelIdentity(Protocol):
    """What a job store needs to know of a model: its version and its bundle's digest
    (a `serve.state.ServedModel` is one)."""

    @property
    def version(self) -> str:
        """The model version recorded with each job it scores."""
        ...

    @property
    def digest(self) -> str:
        """The digest of the model's bundle, telling apart two bundles with the same version."""
        ...


def _same_model(row: sqlite3.Row, model: ModelIdentity) -> bool:
    # Jobs queued before digests were recorded match on the version alone.
    return row["model_version"] == model.version and row["model_digest"] in (None, model.digest)


class JobInputError(UploadError):
    """The submitted job inputs cannot be used; the message says what is wrong.

    An `UploadError`, like every refusal of `inference.uploads` (`safe_extract_zip` is
    imported from there and re-exported here), so routes map both to a 422."""


class JobNotFound(ModalfuseError, KeyError):
    """No job with that id (never submitted, or deleted once expired)."""


class IdempotencyConflict(InvalidInput):
    """An idempotency key reused with a different request."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def resolve_under(root: Path, name: str, what: str) -> Path:
    """`root/name`, refusing anything (.., absolute paths, symlinks) that resolves outside root."""
    root = Path(root).resolve()
    if "\x00" in name:
        raise JobInputError(f"{what} {name!r} contains a NUL byte")
    p = (root / name).resolve()
    if not p.is_relative_to(root):
        raise JobInputError(f"{what} {name!r} is outside the jobs root; give a path relative "
                            "to MODALFUSE_JOBS_ROOT")
    return p


@dataclass
class Job:
    """One row of the job table: state, progress and the one model that scores it."""

    id: str
    state: str
    total_rows: int
    done_rows: int
    error_rows: int
    chunk_rows: int
    model_version: str
    created_at: str
    updated_at: str
    error: str | None
    idempotency_key: str | None
    table_path: str
    images_dir: str
    attempts: int
    model_digest: str | None = None  # with model_version: the one model that scores every row
    note: str | None = None  # why the job waits, or that it was rescored whole

    @property
    def progress(self) -> float:
        """The share of rows done, 0 to 1."""
        return 1.0 if self.total_rows == 0 else self.done_rows / self.total_rows

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (no server paths)."""
        return {"id": self.id, "state": self.state, "total_rows": self.total_rows,
                "done_rows": self.done_rows, "error_rows": self.error_rows,
                "progress": round(self.progress, 4), "model_version": self.model_version,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "error": self.error, "idempotency_key": self.idempotency_key,
                "attempts": self.attempts, "model_digest": self.model_digest,
                "note": self.note}


class JobStore:
    """Jobs and their finished chunks in one SQLite file; each call opens its own connection."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.db_path = self.root / "jobs.db"

    def open(self) -> JobStore:
        """Create the folder and the tables (upgrading an older jobs.db); returns self."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
            for column in ("model_digest", "note"):  # a jobs.db from before these columns
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        return self

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        # FULL: a chunk recorded as done survives power loss, not only a killed process.
        return open_sqlite(self.db_path, autocommit=True, synchronous="FULL", named_rows=True)

    def job_dir(self, job_id: str) -> Path:
        """The folder of a job's staged inputs, chunk files and result."""
        return self.root / job_id

    def result_path(self, job_id: str) -> Path:
        """Where a succeeded job's result is: a pandas pickle the server wrote itself (exact
        dtypes, no pyarrow needed); `result_file` turns it into what a client downloads."""
        return self.job_dir(job_id) / "result.pkl"

    def result_file(self, job_id: str, fmt: str) -> Path:
        """A succeeded job's result as a `fmt` ("parquet" or "csv") file, made once and kept
        beside the result. Parquet needs pyarrow (the `parquet` extra)."""
        path = self.job_dir(job_id) / f"result.{fmt}"
        if path.exists():  # made before, or a result written by an older server (Parquet)
            return path
        own = self.result_path(job_id)
        frame = (pd.read_pickle(own) if own.exists()
                 else pd.read_parquet(self.job_dir(job_id) / "result.parquet"))
        # Its own temporary name: two downloads at once each write a whole file, one wins.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        if fmt == "csv":
            write_csv(frame, tmp)  # formula-like text escaped for spreadsheets
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        return path

    def _row(self, r: sqlite3.Row) -> Job:
        return Job(id=r["id"], state=r["state"], total_rows=r["total_rows"],
                   done_rows=r["done_rows"], error_rows=r["error_rows"],
                   chunk_rows=r["chunk_rows"], model_version=r["model_version"],
                   created_at=r["created_at"], updated_at=r["updated_at"], error=r["error"],
                   idempotency_key=r["idempotency_key"], table_path=r["table_path"],
                   images_dir=r["images_dir"], attempts=r["attempts"],
                   model_digest=r["model_digest"], note=r["note"])

    def get(self, job_id: str) -> Job:
        """The job with this id; `JobNotFound` if there is none."""
        with self._connect() as db:
            r = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if r is None:
            raise JobNotFound(job_id)
        return self._row(r)

    def by_key(self, key: str) -> tuple[Job, str] | None:
        """The job submitted with this idempotency key and its request hash, if any."""
        with self._connect() as db:
            r = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if r is None else (self._row(r), r["request_hash"])

    def insert(self, job_id: str, key: str | None, request_hash: str, table_path: Path,
               images_dir: Path, total_rows: int, chunk_rows: int, model_version: str,
               model_digest: str | None = None) -> Job:
        """Queue a new job for the given model and return it."""
        now = _now()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, idempotency_key, request_hash, state, table_path, "
                "images_dir, total_rows, chunk_rows, model_version, model_digest, created_at, "
                "updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, key, request_hash, str(table_path), str(images_dir), total_rows,
                 chunk_rows, model_version, model_digest, now, now))
        return self.get(job_id)

    def claim(self, owner: str, lease_s: float, model: ModelIdentity | None = None,
              policy: str = "rescore") -> Job | None:
        """Take the oldest unfinished job whose lease is free or expired (a dead worker's).

        With `model`, a job started by another model is never continued by this one: under
        policy "wait" it is left for a worker serving its model (its note says so); under
        "rescore" its finished chunks are dropped and it is rescored whole by this model,
        which its note says, so every row of a result comes from one model.
        """
        if policy not in JOB_MODEL_POLICIES:
            raise ValueError(f"job model policy {policy!r}; valid: {list(JOB_MODEL_POLICIES)}")
        now = time.time()
        free = ("state IN ('queued', 'running') AND "
                "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            if model is not None and policy == "wait":
                same = "model_version = ? AND COALESCE(model_digest, ?) = ?"
                args = (model.version, model.digest, model.digest)
                # Say why a job of another model is not picked up here.
                db.execute(f"UPDATE jobs SET note = 'waiting for a worker serving model ' || "
                           f"model_version || '; this server serves model ' || ? "
                           f"WHERE {free} AND NOT ({same})",
                           (model.version, owner, now, *args))
                r = db.execute(f"SELECT * FROM jobs WHERE {free} AND {same} "
                               "ORDER BY created_at LIMIT 1", (owner, now, *args)).fetchone()
            else:
                r = db.execute(f"SELECT * FROM jobs WHERE {free} ORDER BY created_at LIMIT 1",
                               (owner, now)).fetchone()
            if r is None:
                db.execute("COMMIT")
                return None
            if model is not None and not _same_model(r, model):
                # policy "rescore": one model for every row, and the job says which.
                note = (f"rescored whole by model {model.version}: it was started by model "
                        f"{r['model_version']}, which this worker does not serve")
                db.execute("DELETE FROM job_chunks WHERE job_id = ?", (r["id"],))
                db.execute("UPDATE jobs SET model_version = ?, model_digest = ?, note = ?, "
                           "done_rows = 0, error_rows = 0 WHERE id = ?",
                           (model.version, model.digest, note, r["id"]))
                log.warning("job rescored whole by another model",
                            extra={"job_id": r["id"], "from_model": r["model_version"],
                                   "to_model": model.version})
            db.execute("UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, "
                       "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                       (owner, now + lease_s, _now(), r["id"]))
            db.execute("COMMIT")
        return self.get(r["id"])

    def done_chunks(self, job_id: str) -> set[int]:
        """Indices of the chunks of a job already scored and recorded."""
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT idx FROM job_chunks WHERE job_id = ?",
                                             (job_id,))}

    def record_chunk(self, job_id: str, idx: int, rows: int, errors: int, owner: str,
                     lease_s: float) -> bool:
        """Mark a chunk done and renew the lease; False if this worker lost the job."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute("UPDATE jobs SET lease_until = ?, updated_at = ? "
                             "WHERE id = ? AND lease_owner = ? AND state = 'running'",
                             (time.time() + lease_s, _now(), job_id, owner))
            if cur.rowcount != 1:
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT OR REPLACE INTO job_chunks (job_id, idx, rows, errors) "
                       "VALUES (?, ?, ?, ?)", (job_id, idx, rows, errors))
            db.execute("UPDATE jobs SET done_rows = (SELECT COALESCE(SUM(rows), 0) FROM "
                       "job_chunks WHERE job_id = ?), error_rows = (SELECT "
                       "COALESCE(SUM(errors), 0) FROM job_chunks WHERE job_id = ?) WHERE id = ?",
                       (job_id, job_id, job_id))
            db.execute("COMMIT")
        return True

    def finish(self, job_id: str, owner: str, state: str, error: str | None = None) -> None:
        """Set a job's final state and free its lease (only if `owner` still holds it)."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, "
                       "lease_until = NULL, updated_at = ? WHERE id = ? AND lease_owner = ?",
                       (state, error, _now(), job_id, owner))

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (every state listed, 0 included)."""
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | {r[0]: r[1] for r in rows}

    def expired(self, before: datetime) -> list[str]:
        """Ids of finished jobs (succeeded or failed) last updated before `before`, oldest first."""
        cutoff = before.astimezone(UTC).isoformat(timespec="milliseconds")  # as `_now` writes
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE state IN ('succeeded', 'failed') AND "
                              "updated_at < ? ORDER BY updated_at", (cutoff,)).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> None:
        """Forget a job and remove its folder (staged inputs, chunks, results)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM job_chunks WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("COMMIT")
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def request_hash(*parts: bytes | str) -> str:
    """A digest of a submission's parts: the same inputs, the same hash (idempotency)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def create_job(store: JobStore, predictor: Predictor, *, table_file: Path, table_name: str,
               images_zip: Path | None, images_dir: Path | None, idempotency_key: str | None,
               chunk_rows: int, limits: UploadLimits,
               images_name: str = "images.zip") -> tuple[Job, bool]:
    """Validate inputs, lay out the job folder and queue it. Returns (job, created).

    `table_file` is a staged upload or a server-side table; `images_zip` an uploaded zip to
    unpack (called `images_name` in messages), or `images_dir` a server-side folder. Both
    are checked by `inference.uploads` (an `UploadError` says why not), the table's size from
    its metadata before it is read. A repeated idempotency key returns the first job if the
    request is the same, and refuses a different request.
    """
    suffix = Path(table_name).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise JobInputError(f"table must be a .csv or .parquet file, got {table_name!r}")
    if suffix != ".csv" and not parquet_available():
        raise JobInputError(f"cannot take {table_name!r}: {NO_PARQUET}")
    rhash = request_hash(file_digest(table_file),
                         file_digest(images_zip) if images_zip else str(images_dir))
    if idempotency_key is not None:
        found = store.by_key(idempotency_key)
        if found is not None:
            job, seen_hash = found
            if seen_hash != rhash:
                raise IdempotencyConflict(
                    f"Idempotency-Key {idempotency_key!r} was used for a different request "
                    f"(job {job.id}); use a new key for new inputs")
            return job, False
    job_id = uuid.uuid4().hex
    jdir = store.job_dir(job_id)
    jdir.mkdir(parents=True)
    try:
        staged = jdir / f"input{'.csv' if suffix == '.csv' else '.parquet'}"
        shutil.copyfile(table_file, staged)
        shape = check_table(staged, table_name, predictor.spec.image_column, limits.max_rows)
        if images_zip is not None:
            images_dir = jdir / "images"
            safe_extract_zip(images_zip, images_dir, limits, images_name)
        assert images_dir is not None
        (jdir / "parts").mkdir()
        try:
            job = store.insert(job_id, idempotency_key, rhash, staged, images_dir, shape.rows,
                               chunk_rows, predictor.model_version, predictor.bundle.model_digest)
        except sqlite3.IntegrityError:
            # The same key raced in from another request: answer with the winner.
            shutil.rmtree(jdir, ignore_errors=True)
            found = store.by_key(idempotency_key or "")
            if found is None:
                raise
            return found[0], False
    except BaseException:
        shutil.rmtree(jdir, ignore_errors=True)
        raise
    log.info("job queued", extra={"job_id": job_id, "rows": shape.rows})
    return job, True


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    # A pickle: written and read only by this server, exact dtypes, no pyarrow needed.
    tmp = path.with_name(path.name + ".tmp")
    frame.to_pickle(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_job(store: JobStore, predictor: Predictor, job: Job, owner: str, lease_s: float,
            stop: threading.Event | None = None) -> str:
    """Score the chunks not yet done, then assemble the result; returns the final state.

    `predictor` must serve the job's model (`JobStore.claim` with the worker's model sees
    to it); the assembled result is checked to carry that one model version on every row.
    """
    if predictor.model_version != job.model_version:
        raise RuntimeError(f"job {job.id} belongs to model {job.model_version}, not "
                           f"{predictor.model_version}")
    table = Path(job.table_path)
    images_dir = Path(job.images_dir)
    parts = store.job_dir(job.id) / "parts"
    n_chunks = max(1, -(-job.total_rows // job.chunk_rows))
    done = store.done_chunks(job.id)
    # One chunk in memory at a time; chunks already done are not even read.
    for chunk in iter_row_chunks(table, job.chunk_rows, skip=done):
        if stop is not None and stop.is_set():
            return "running"
        idx, start = chunk.number, chunk.start
        scored = score_frame(predictor, chunk.rows, images_dir, from_text=table.suffix == ".csv",
                             with_ids=True)
        scored.insert(0, "row", np.arange(start, start + len(chunk.rows)))
        _write_atomic(scored, parts / f"{idx:06d}.pkl")
        n_err = int(scored["error"].notna().sum())
        if not store.record_chunk(job.id, idx, len(chunk.rows), n_err, owner, lease_s):
            log.warning("job lease lost", extra={"job_id": job.id})
            return "running"
    result = pd.concat([pd.read_pickle(parts / f"{i:06d}.pkl") for i in range(n_chunks)],
                       ignore_index=True)
    if len(result) != job.total_rows or not np.array_equal(result["row"].to_numpy(),
                                                          np.arange(job.total_rows)):
        raise RuntimeError(f"job {job.id}: assembled {len(result)} rows for {job.total_rows} "
                           "inputs; the chunk files are inconsistent")
    models = set(result["model_version"].dropna().unique().tolist())
    if models - {job.model_version}:
        raise RuntimeError(f"job {job.id}: rows scored by {sorted(models)}, but the job belongs "
                           f"to model {job.model_version}; refusing to mix models")
    _write_atomic(result, store.result_path(job.id))
    store.finish(job.id, owner, "succeeded")
    return "succeeded"


class JobWorker:
    """One background thread in the server process that claims and runs jobs.

    It scores with the model its holder serves at claim time: a reload between two jobs
    changes the model of the next one, never of a job being run.
    """

    def __init__(self, store: JobStore, holder: ModelHolder, lease_s: float = 30.0,
                 poll_s: float = 0.2, policy: str = "rescore"):
        if policy not in JOB_MODEL_POLICIES:
            raise ValueError(f"job model policy {policy!r}; valid: {list(JOB_MODEL_POLICIES)}")
        self.store, self.holder = store, holder
        self.lease_s, self.poll_s, self.policy = lease_s, poll_s, policy
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        """Start the worker thread unless it is running."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="modalfuse-jobs",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look for a job now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after the chunk it is on (the job stays resumable)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            served = self.holder.current  # read once: a reload swaps it between jobs, never within
            try:
                job = self.store.claim(self.owner, self.lease_s, served, self.policy)
            except sqlite3.Error:
                log.exception("cannot claim a job")
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            try:
                state = run_job(self.store, served.predictor, job, self.owner, self.lease_s,
                                self._stop)
                log.info("job %s", state, extra={"job_id": job.id})
            except Exception as e:  # a job that cannot finish is failed, the worker goes on
                log.exception("job failed", extra={"job_id": job.id})
                self.store.finish(job.id, self.owner, "failed", f"{type(e).__name__}: {e}")
