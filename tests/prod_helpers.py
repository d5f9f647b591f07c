"""Helpers for the production tests: job inputs (table + images zip) made from the fixture dataset,
and stopping a server started in its own process group."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd

API_KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": API_KEY}


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
    end = time.time() + timeout
    while time.time() < end:
        job = client_get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if job["state"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


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

