"""A real server killed with SIGKILL mid-job: after a restart the job finishes, one row per input row."""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from prod_helpers import API_KEY, AUTH, job_inputs, wait_for, wait_healthy, wait_until

pytestmark = pytest.mark.slow  # starts real servers, two or three per test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env: dict, port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "modalfuse.serve.asgi:app",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:  # a loaded 2-core CI machine imports slowly
        wait_healthy(f"http://127.0.0.1:{port}", proc, Path(log.name), timeout=180)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc


def _job(c: httpx.Client, job_id: str) -> dict:
    return c.get(f"/v1/jobs/{job_id}", headers=AUTH).json()


def _wait_part_way(c: httpx.Client, job_id: str, n: int) -> None:
    """Wait until the job has scored some of its n rows but under half: the moment to kill."""
    def part_way() -> bool:
        job = _job(c, job_id)
        assert job["state"] != "succeeded", "job finished before it could be killed"
        return 0 < job["done_rows"] < n // 2

    wait_until(part_way, 60, f"job {job_id} to be part-way through", interval=0.01)


def test_kill_9_mid_job_then_restart_finishes_exactly_once(fixture_bundle, fixture_dataset,
                                                           tmp_path):
    data_dir = tmp_path / "data"
    env = {**os.environ, "MODALFUSE_BUNDLE": str(fixture_bundle.path),
           "MODALFUSE_DATA_DIR": str(data_dir), "MODALFUSE_API_KEY": API_KEY,
           "MODALFUSE_JOB_CHUNK_ROWS": "10", "MODALFUSE_JOB_LEASE_S": "1",
           "MODALFUSE_LOG_PREDICTIONS": "false"}
    n = 600
    table, images, _ = job_inputs(fixture_dataset, n, bad_rows=(5, 444))
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (outlives two servers)
    port = _free_port()
    server = _start(env, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/v1/jobs", headers={**AUTH, "Idempotency-Key": "crash-1"},
                       files={"table": ("rows.csv", table), "images": ("img.zip", images)})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            # Wait until the job is part-way through, then kill the server without warning.
            _wait_part_way(c, job_id, n)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        with sqlite3.connect(data_dir / "jobs" / "jobs.db") as db:
            state, done = db.execute("SELECT state, done_rows FROM jobs WHERE id = ?",
                                     (job_id,)).fetchone()
        assert state == "running" and 0 < done < n, (state, done)

        server = _start(env, port, log)
        with httpx.Client(base_url=base, timeout=30) as c:
            job = wait_for(c.get, job_id, timeout=120)
            assert job["state"] == "succeeded", job
            assert job["attempts"] >= 2 and job["done_rows"] == n and job["error_rows"] == 2
            # A retried submission after the crash gets the same job, not a second one.
            again = c.post("/v1/jobs", headers={**AUTH, "Idempotency-Key": "crash-1"},
                           files={"table": ("rows.csv", table), "images": ("img.zip", images)})
            assert again.status_code == 200 and again.json()["id"] == job_id
            out = pd.read_parquet(io.BytesIO(c.get(f"/v1/jobs/{job_id}/result",
                                                   headers=AUTH).content))
        assert len(out) == n
        assert out["row"].tolist() == list(range(n))
        assert out["id"].tolist() == list(range(n))
        assert out["error"].notna().sum() == 2
        assert out["predicted"].notna().sum() == n - 2
    finally:
        server.kill()
        server.wait(10)
        log.close()


def _kill(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGKILL)
    server.wait(10)


def test_a_job_never_mixes_models_across_a_restart(fixture_bundle, fixture_dataset,
                                                   fixture_splits, tmp_path):
    """Killed mid-job, restarted with another model: it waits for its model ("wait"), or is
    rescored whole by the new one ("rescore"); never rows of two models in one result."""
    from modalfuse.training.train import TrainConfig, train

    other = train(fixture_dataset, fixture_splits, tmp_path / "other",
                  TrainConfig(num_boost_round=8, cv=False, seed=3, exclude_fields=["color"]),
                  evaluate_test=False)
    assert other.model_version != fixture_bundle.model_version
    data_dir = tmp_path / "data"
    base_env = {**os.environ, "MODALFUSE_DATA_DIR": str(data_dir), "MODALFUSE_API_KEY": API_KEY,
                "MODALFUSE_JOB_CHUNK_ROWS": "10", "MODALFUSE_JOB_LEASE_S": "1",
                "MODALFUSE_LOG_PREDICTIONS": "false"}
    env_a = {**base_env, "MODALFUSE_BUNDLE": str(fixture_bundle.path)}
    env_b = {**base_env, "MODALFUSE_BUNDLE": str(other.path)}
    n = 600
    table, images, _ = job_inputs(fixture_dataset, n)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (outlives three servers)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(env_a, port, log)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/jobs", headers=AUTH,
                       files={"table": ("rows.csv", table), "images": ("img.zip", images)})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            assert r.json()["model_version"] == fixture_bundle.model_version
            assert r.json()["model_digest"] == fixture_bundle.model_digest
            _wait_part_way(c, job_id, n)
        _kill(server)

        # Another model, policy "wait": the job is left alone, and says why.
        server = _start({**env_b, "MODALFUSE_JOB_MODEL_POLICY": "wait"}, port, log)
        with httpx.Client(base_url=url, timeout=30) as c:
            # Once the dead worker's lease is over, a claim round finds the job and leaves it.
            def left_for_its_model() -> dict | None:
                job = _job(c, job_id)
                return job if "waiting for a worker" in (job.get("note") or "") else None

            job = wait_until(left_for_its_model, 60, "the job's note that it waits for its model",
                             detail=lambda: _job(c, job_id))
            assert job["state"] in ("queued", "running") and 0 < job["done_rows"] < n, job
            assert job["model_version"] == fixture_bundle.model_version
            assert f"waiting for a worker serving model {fixture_bundle.model_version}" in job["note"]
            stuck = job["done_rows"]
            # Kept as a sleep: that nothing happens is the point. 1.5 s is several claim rounds
            # (the worker polls every 0.2 s), none of which may score a row of this job.
            time.sleep(1.5)
            assert _job(c, job_id)["done_rows"] == stuck
        _kill(server)

        # Another model, policy "rescore" (the default): rescored whole, and it says so.
        server = _start(env_b, port, log)
        with httpx.Client(base_url=url, timeout=30) as c:
            job = wait_for(c.get, job_id, timeout=120)
            assert job["state"] == "succeeded", job
            assert job["model_version"] == other.model_version
            assert job["model_digest"] == other.model_digest
            assert "rescored whole by model" in job["note"] and job["done_rows"] == n
            out = pd.read_parquet(io.BytesIO(c.get(f"/v1/jobs/{job_id}/result",
                                                   headers=AUTH).content))
        assert len(out) == n and out["row"].tolist() == list(range(n))  # none lost, none twice
        assert set(out["model_version"]) == {other.model_version}  # one model, every row
    finally:
        server.kill()
        server.wait(10)
        log.close()
