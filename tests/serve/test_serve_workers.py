"""`modalfuse serve --workers 2`: two processes behind one port, as one server.

Requests on fresh connections land on either worker; /metrics on any worker sums both, the
prediction log gets every row once from both writers, a job is scored by one worker, and a
reload reaches both before it answers.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from prod_helpers import API_KEY, AUTH, job_inputs, stop_group, wait_for, wait_healthy, wait_until

pytestmark = pytest.mark.slow  # starts `modalfuse serve --workers 2`

N_REQUESTS = 60


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh(url: str) -> httpx.Client:
    # No keep-alive: every request is a new connection, which either worker may accept.
    return httpx.Client(base_url=url, timeout=60,
                        limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def server(fixture_bundle, fixture_dataset, fixture_splits, tmp_path_factory):
    from modalfuse.training.train import TrainConfig, train

    d = tmp_path_factory.mktemp("workers")
    other = train(fixture_dataset, fixture_splits, d / "other",
                  TrainConfig(num_boost_round=9, seed=3, cv=False), evaluate_test=False)
    port = free_port()
    env = {**os.environ, "MODALFUSE_DATA_DIR": str(d / "data"), "MODALFUSE_API_KEY": API_KEY,
           "MODALFUSE_JOB_CHUNK_ROWS": "7"}
    for k in ("MODALFUSE_MODEL_URI", "MODALFUSE_BUNDLE", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(k, None)
    log = open(d / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "modalfuse"), "serve", "--workers", "2",
         "--port", str(port), "--bundle", str(fixture_bundle.path)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, d / "server.log", timeout=120)
        yield {"url": url, "data": d / "data", "bundle": fixture_bundle, "other": other,
               "proc": proc, "log": d / "server.log"}
    finally:
        stop_group(proc, 30)
        log.close()


def predict_count(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("modalfuse_http_requests_total{")
               and 'route="/v1/predict"' in line)


def test_two_workers_serve_log_count_and_reload_as_one(server, fixture_dataset):
    url = server["url"]
    body = json.loads((server["bundle"].path / "bundle.json").read_text())["example"]
    ids = []
    for _ in range(N_REQUESTS):
        with fresh(url) as c:
            r = c.post("/v1/predict", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.json()["prediction_id"])
    assert len(set(ids)) == N_REQUESTS

    # Whichever worker answers /metrics, it counts both workers' requests.
    counts = set()
    for _ in range(8):
        with fresh(url) as c:
            counts.add(predict_count(c.get("/metrics").text))
    assert counts == {float(N_REQUESTS)}, counts

    # The prediction log: every row once, from both writers, none torn.
    db_path = server["data"] / "monitoring" / "predictions.db"

    def logged_rows() -> list:
        with sqlite3.connect(db_path, timeout=30) as db:
            return db.execute("SELECT prediction_id, proba FROM predictions").fetchall()

    wait_until(lambda: len(logged_rows()) >= N_REQUESTS, 10,
               f"{N_REQUESTS} rows in the prediction log", interval=0.3,
               detail=lambda: f"{len(logged_rows())} rows")
    rows = logged_rows()
    n_labels = len(server["bundle"].labels)
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(len(r[1]) == 4 * n_labels for r in rows)

    # A job is claimed once and scored once, though both workers run a job worker.
    table, images, _ = job_inputs(fixture_dataset, 30)
    with fresh(url) as c:
        r = c.post("/v1/jobs", headers=AUTH, files={"table": ("rows.csv", table, "text/csv"),
                                                     "images": ("images.zip", images)})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
    with fresh(url) as c:
        job = wait_for(c.get, job_id, timeout=60)
    assert job["state"] == "succeeded" and job["attempts"] == 1, job
    with fresh(url) as c:
        out = pd.read_csv(io.BytesIO(c.get(f"/v1/jobs/{job_id}/result?format=csv",
                                           headers=AUTH).content))
    assert out["row"].tolist() == list(range(30))

    # A reload answers once both workers serve the new model; then every request gets it.
    new = server["other"]
    with fresh(url) as c:
        r = c.post("/admin/reload", headers=AUTH, json={"bundle": str(new.path)})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_version"] == new.model_version
    workers = answer["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2, workers
    assert all(w["model_version"] == new.model_version and w["error"] is None for w in workers)
    for _ in range(20):
        with fresh(url) as c:
            assert c.post("/v1/predict", json=body).json()["model_version"] == new.model_version
