"""Retention of batch jobs: finished jobs are deleted, with their folders, after a TTL.

A job that succeeded or failed more than `MODALFUSE_JOB_TTL` ago loses its row and its
folder under `<data dir>/jobs/` (staged table, unpacked images, chunk files, results);
asking for it afterwards is a 404 that says so. Folders no job row owns (a server killed
while creating a job or receiving an upload) go too, once older than the TTL (and an
hour at least).
`RetentionSweeper` runs the sweep in a thread of the server: at start-up, then periodically.
The prediction log prunes itself from its own writer thread (`monitor/predlog/retention.py`).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modalfuse.serve.jobs import JobNotFound, JobStore

log = logging.getLogger("modalfuse.retention")

# A folder with no job row may be a job being created right now: it is left alone this long.
ORPHAN_GRACE_S = 3600.0
_JOB_FOLDER = re.compile(r"^([0-9a-f]{32}|upload-.+)$")


def describe_duration(seconds: float) -> str:
    """`604800` -> "7d", `43200` -> "12h": the largest unit that divides it, for messages."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class JobSweep:
    """What one sweep removed: expired jobs, and folders no job owned."""

    jobs: int
    orphan_folders: int


def sweep_jobs(store: JobStore, ttl_s: float, now: datetime | None = None) -> JobSweep:
    """Delete jobs finished more than `ttl_s` ago, and stale folders without a job."""
    now = now or datetime.now(UTC)
    expired = store.expired(now - timedelta(seconds=ttl_s))
    for job_id in expired:
        store.delete(job_id)
    orphans = 0
    stale_before = (now - timedelta(seconds=max(ttl_s, ORPHAN_GRACE_S))).timestamp()
    for folder in store.root.iterdir() if store.root.is_dir() else ():
        if not (folder.is_dir() and _JOB_FOLDER.match(folder.name)):
            continue
        if folder.stat().st_mtime >= stale_before or _has_job(store, folder.name):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        orphans += 1
    if expired or orphans:
        log.info("jobs expired", extra={"jobs_deleted": len(expired),
                                        "orphan_folders_deleted": orphans,
                                        "job_ttl_s": ttl_s})
    return JobSweep(len(expired), orphans)


def _has_job(store: JobStore, name: str) -> bool:
    try:
        store.get(name)
    except JobNotFound:
        return False
    return True


class RetentionSweeper:
    """A daemon thread that runs `sweep_jobs` when started and then every `every_s` seconds."""

    def __init__(self, store: JobStore, ttl_s: float, every_s: float):
        self.store, self.ttl_s, self.every_s = store, ttl_s, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sweeping thread, unless it is already running."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="modalfuse-retention",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait up to `timeout` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sweep_jobs(self.store, self.ttl_s)
            except Exception:  # a failed sweep is retried next time; serving goes on
                log.exception("job retention sweep failed")
            self._stop.wait(self.every_s)
