"""Persistent async batch jobs: a SQLite (WAL) job table, safe inputs, a checkpointed worker.

A job's rows are scored in fixed chunks through `batch.score_frame` (so through the
Predictor). Each chunk's output is written to its own file atomically *before* the chunk
is recorded as done in the database, so a worker killed at any instant redoes at most the
chunk it was on, and the final result has exactly one row per input row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.batch import BatchInputError, read_rows, score_frame
from modalfuse.predict import Predictor

log = logging.getLogger("modalfuse.jobs")

STATES = ("queued", "running", "succeeded", "failed")
# A member that unpacks to more than this many times its compressed size is a zip bomb:
# real images (PNG/GIF/JPEG) are already compressed and barely shrink in a zip.
MAX_COMPRESSION_RATIO = 200

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


class JobInputError(ValueError):
    """The submitted job inputs cannot be used; the message says what is wrong."""


class JobNotFound(KeyError):
    pass


class IdempotencyConflict(ValueError):
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


def safe_extract_zip(zip_path: Path, dest: Path, max_members: int, max_bytes: int) -> int:
    """Extract regular files of a zip into dest; refuse traversal, links and zip bombs.

    Sizes in the zip's headers are checked first and then enforced while reading, since a
    hostile archive can lie in its headers. Returns the number of files extracted.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise JobInputError(f"images is not a valid zip archive: {e}") from None
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise JobInputError(f"images zip has {len(members)} entries; the limit is "
                                f"{max_members}")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise JobInputError(f"images zip unpacks to {declared} bytes; the limit is {max_bytes}")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        total, count = 0, 0
        for m in members:
            name = m.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
                raise JobInputError(f"images zip entry {name!r} escapes the archive folder "
                                    "(absolute path or '..'); entries must be relative paths")
            mode = m.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise JobInputError(f"images zip entry {name!r} is a symbolic link; only "
                                    "regular files are allowed")
            if m.is_dir():
                continue
            if m.compress_size and m.file_size / m.compress_size > MAX_COMPRESSION_RATIO:
                raise JobInputError(
                    f"images zip entry {name!r} expands {m.file_size / m.compress_size:.0f}x "
                    f"(limit {MAX_COMPRESSION_RATIO}x): refused as a zip bomb")
            target = (root / PurePosixPath(*parts)).resolve()
            if not target.is_relative_to(root):
                raise JobInputError(f"images zip entry {name!r} escapes the archive folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 16):
                        total += len(chunk)
                        if total > max_bytes:
                            raise JobInputError(f"images zip unpacks to more than {max_bytes} "
                                                "bytes (its headers understate it)")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise JobInputError(f"images zip entry {name!r} is corrupt: {e}") from None
            count += 1
        return count


@dataclass
class Job:
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

    @property
    def progress(self) -> float:
        return 1.0 if self.total_rows == 0 else self.done_rows / self.total_rows

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "total_rows": self.total_rows,
                "done_rows": self.done_rows, "error_rows": self.error_rows,
                "progress": round(self.progress, 4), "model_version": self.model_version,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "error": self.error, "idempotency_key": self.idempotency_key,
                "attempts": self.attempts}


class JobStore:
    """Jobs and their finished chunks in one SQLite file; each call opens its own connection."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.db_path = self.root / "jobs.db"

    def open(self) -> JobStore:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
        return self

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a chunk recorded as done survives power loss, not only a killed process.
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.parquet"

    def _row(self, r: sqlite3.Row) -> Job:
        return Job(id=r["id"], state=r["state"], total_rows=r["total_rows"],
                   done_rows=r["done_rows"], error_rows=r["error_rows"],
                   chunk_rows=r["chunk_rows"], model_version=r["model_version"],
                   created_at=r["created_at"], updated_at=r["updated_at"], error=r["error"],
                   idempotency_key=r["idempotency_key"], table_path=r["table_path"],
                   images_dir=r["images_dir"], attempts=r["attempts"])

    def get(self, job_id: str) -> Job:
        with self._connect() as db:
            r = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if r is None:
            raise JobNotFound(job_id)
        return self._row(r)

    def by_key(self, key: str) -> tuple[Job, str] | None:
        with self._connect() as db:
            r = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if r is None else (self._row(r), r["request_hash"])

    def insert(self, job_id: str, key: str | None, request_hash: str, table_path: Path,
               images_dir: Path, total_rows: int, chunk_rows: int, model_version: str) -> Job:
        now = _now()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, idempotency_key, request_hash, state, table_path, "
                "images_dir, total_rows, chunk_rows, model_version, created_at, updated_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, key, request_hash, str(table_path), str(images_dir), total_rows,
                 chunk_rows, model_version, now, now))
        return self.get(job_id)

    def claim(self, owner: str, lease_s: float) -> Job | None:
        """Take the oldest unfinished job whose lease is free or expired (a dead worker's)."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            r = db.execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') AND "
                "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?) "
                "ORDER BY created_at LIMIT 1", (owner, now)).fetchone()
            if r is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, "
                       "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                       (owner, now + lease_s, _now(), r["id"]))
            db.execute("COMMIT")
        return self.get(r["id"])

    def done_chunks(self, job_id: str) -> set[int]:
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
        with self._connect() as db:
            db.execute("UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, "
                       "lease_until = NULL, updated_at = ? WHERE id = ? AND lease_owner = ?",
                       (state, error, _now(), job_id, owner))

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | {r[0]: r[1] for r in rows}


def request_hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def create_job(store: JobStore, predictor: Predictor, *, table_file: Path, table_name: str,
               images_zip: Path | None, images_dir: Path | None, idempotency_key: str | None,
               chunk_rows: int, max_rows: int, max_zip_members: int,
               max_zip_bytes: int) -> tuple[Job, bool]:
    """Validate inputs, lay out the job folder and queue it. Returns (job, created).

    `table_file` is a staged upload or a server-side table; `images_zip` an uploaded zip to
    unpack, or `images_dir` a server-side folder. A repeated idempotency key returns the
    first job if the request is the same, and refuses a different request.
    """
    suffix = Path(table_name).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise JobInputError(f"table must be a .csv or .parquet file, got {table_name!r}")
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
        try:
            rows = read_rows(staged)
        except BatchInputError as e:
            raise JobInputError(str(e).replace(str(staged), table_name)) from None
        spec = predictor.spec
        if spec.image_column not in rows.columns:
            raise JobInputError(f"table has no image column {spec.image_column!r}; its columns "
                                f"are {list(rows.columns)}")
        if len(rows) == 0:
            raise JobInputError("table has no rows; send 1 or more")
        if len(rows) > max_rows:
            raise JobInputError(f"table has {len(rows)} rows; the limit is {max_rows}")
        if images_zip is not None:
            images_dir = jdir / "images"
            safe_extract_zip(images_zip, images_dir, max_zip_members, max_zip_bytes)
        assert images_dir is not None
        (jdir / "parts").mkdir()
        try:
            job = store.insert(job_id, idempotency_key, rhash, staged, images_dir, len(rows),
                               chunk_rows, predictor.model_version)
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
    log.info("job queued", extra={"job_id": job_id, "rows": len(rows)})
    return job, True


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_job(store: JobStore, predictor: Predictor, job: Job, owner: str, lease_s: float,
            stop: threading.Event | None = None) -> str:
    """Score the chunks not yet done, then assemble the result; returns the final state."""
    rows = read_rows(Path(job.table_path))
    images_dir = Path(job.images_dir)
    parts = store.job_dir(job.id) / "parts"
    n_chunks = max(1, -(-job.total_rows // job.chunk_rows))
    done = store.done_chunks(job.id)
    for idx in range(n_chunks):
        if idx in done:
            continue
        if stop is not None and stop.is_set():
            return "running"
        start = idx * job.chunk_rows
        chunk = rows.iloc[start:start + job.chunk_rows].reset_index(drop=True)
        scored = score_frame(predictor, chunk, images_dir)
        scored.insert(0, "row", np.arange(start, start + len(chunk)))
        _write_atomic(scored, parts / f"{idx:06d}.parquet")
        n_err = int(scored["error"].notna().sum())
        if not store.record_chunk(job.id, idx, len(chunk), n_err, owner, lease_s):
            log.warning("job lease lost", extra={"job_id": job.id})
            return "running"
    result = pd.concat([pd.read_parquet(parts / f"{i:06d}.parquet") for i in range(n_chunks)],
                       ignore_index=True)
    if len(result) != job.total_rows or not np.array_equal(result["row"].to_numpy(),
                                                          np.arange(job.total_rows)):
        raise RuntimeError(f"job {job.id}: assembled {len(result)} rows for {job.total_rows} "
                           "inputs; the chunk files are inconsistent")
    _write_atomic(result, store.result_path(job.id))
    store.finish(job.id, owner, "succeeded")
    return "succeeded"


class JobWorker:
    """One background thread in the server process that claims and runs jobs."""

    def __init__(self, store: JobStore, predictor: Predictor, lease_s: float = 30.0,
                 poll_s: float = 0.2):
        self.store, self.predictor = store, predictor
        self.lease_s, self.poll_s = lease_s, poll_s
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="modalfuse-jobs",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim(self.owner, self.lease_s)
            except sqlite3.Error:
                log.exception("cannot claim a job")
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            try:
                state = run_job(self.store, self.predictor, job, self.owner, self.lease_s,
                                self._stop)
                log.info("job %s", state, extra={"job_id": job.id})
            except Exception as e:  # a job that cannot finish is failed, the worker goes on
                log.exception("job failed", extra={"job_id": job.id})
                self.store.finish(job.id, self.owner, "failed", f"{type(e).__name__}: {e}")
