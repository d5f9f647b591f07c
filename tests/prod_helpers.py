"""Helpers for the production tests: job inputs (table + images zip) made from the fixture dataset,
waiting on a condition with a deadline, and stopping a server started in its own process group."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

API_KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": API_KEY}

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05,
               detail: Callable[[], object] | None = None) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return
    that; fail naming `what` (and `detail()`, e.g. a server's log) after `timeout` seconds.

    For tests that wait for something to happen: a fixed sleep is too short on a loaded
    machine and too long on a quiet one.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)


def job_inputs(dataset, n_rows: int, bad_rows: tuple[int, ...] = ()) -> tuple[bytes, bytes, pd.DataFrame]:
    """A CSV of n_rows (fixture rows repeated) and a zip of the images they name.

    Rows in bad_rows name an image that is not in the zip, so they must come back as errors.
    """
    spec = dataset.spec
    base = dataset.table
    table = pd.concat([base] * (n_rows // len(base) + 1), ignore_index=True).iloc[:n_rows].copy()
    table[spec.id_column] = range(len(table))
    for i in bad_rows:
        table.loc[i, spec.image_column] = "missing/nowhere.png"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in base[spec.image_column].unique():
            zf.writestr(str(name), dataset.image_bytes(name))
    return table.to_csv(index=False).encode(), buf.getvalue(), table


def wait_for(client_get, job_id: str, timeout: float = 60.0, until=("succeeded", "failed")) -> dict:
    """Poll job `job_id` through `client_get` until its state is one of `until`; return it."""
    last: dict = {}

    def settled() -> dict | None:
        last.update(client_get(f"/v1/jobs/{job_id}", headers=AUTH).json())
        return dict(last) if last["state"] in until else None

    return wait_until(settled, timeout, f"job {job_id} to reach {'/'.join(until)}",
                      detail=lambda: last)


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a server started with `start_new_session=True` and everything it spawned: SIGTERM
    to its process group, SIGKILL if it is still there after `timeout` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Wait until `url`/health answers 200 on a new connection; fail with the server's log if
    it exits first or does not answer within `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"server did not answer /health:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)

