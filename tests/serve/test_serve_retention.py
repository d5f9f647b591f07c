"""Retention: expired jobs go with their folders; the prediction log keeps to its age and size."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings, parse_duration
from modalfuse.monitor.predlog import SCHEMA, PredictionLog
from modalfuse.serve.app import create_app
from modalfuse.serve.retention import ORPHAN_GRACE_S, describe_duration, sweep_jobs
from prod_helpers import API_KEY, AUTH, job_inputs, wait_for, wait_until


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), (90, 90), ("45s", 45), ("30m", 1800),
                                               ("12h", 43200), ("7d", 604800), ("1.5h", 5400),
                                               ("2w", 1209600)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_durations_are_refused_with_the_valid_forms(monkeypatch):
    monkeypatch.setenv("MODALFUSE_JOB_TTL", "7 days")
    with pytest.raises(ValueError, match=r"12h, 7d"):
        Settings()
    monkeypatch.setenv("MODALFUSE_JOB_TTL", "12h")
    monkeypatch.setenv("MODALFUSE_PREDICTION_LOG_MAX_AGE", "30d")
    s = Settings()
    assert (s.job_ttl, s.prediction_log_max_age) == (43200, 30 * 86400)
    assert s.prediction_log_max_mb == 200
    assert describe_duration(604800) == "7d" and describe_duration(90) == "90s"


def _age_job(store, job_id: str, days: float) -> None:
    when = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE jobs SET updated_at = ?, created_at = ? WHERE id = ?",
                   (when, when, job_id))


def test_expired_jobs_are_deleted_with_their_folders_and_answer_404(predictor, fixture_dataset,
                                                                     tmp_path):
    table, images, _ = job_inputs(fixture_dataset, 4)
    settings = Settings(data_dir=tmp_path, api_key=API_KEY, job_ttl="7d")
    with TestClient(create_app(settings, predictor=predictor)) as client:
        ids = []
        for _ in range(2):
            r = client.post("/v1/jobs", headers=AUTH, files={
                "table": ("rows.csv", table, "text/csv"),
                "images": ("images.zip", images, "application/zip")})
            assert r.status_code == 201, r.text
            ids.append(wait_for(client.get, r.json()["id"])["id"])
        old, fresh = ids
        store = client.app.state.job_store
        assert client.get(f"/v1/jobs/{old}/result", params={"format": "csv"},
                          headers=AUTH).status_code == 200
        _age_job(store, old, days=8)
        orphan = store.root / ("f" * 32)  # a folder a killed server left without a job row
        orphan.mkdir()
        stale = time.time() - max(settings.job_ttl, ORPHAN_GRACE_S) - 60
        os.utime(orphan, (stale, stale))
        young_orphan = store.root / "upload-young"  # an upload in progress: kept
        young_orphan.mkdir()

        swept = sweep_jobs(store, settings.job_ttl)

        assert (swept.jobs, swept.orphan_folders) == (1, 1)
        assert not store.job_dir(old).exists() and not orphan.exists()
        assert store.job_dir(fresh).is_dir() and young_orphan.is_dir()
        for url in (f"/v1/jobs/{old}", f"/v1/jobs/{old}/result"):
            r = client.get(url, headers=AUTH)
            assert r.status_code == 404
            assert "7d ago (MODALFUSE_JOB_TTL) and was deleted" in r.json()["detail"]
        assert client.get(f"/v1/jobs/{fresh}", headers=AUTH).json()["state"] == "succeeded"


def test_the_server_sweeps_expired_jobs_at_start_up(predictor, fixture_dataset, tmp_path):
    table, images, _ = job_inputs(fixture_dataset, 3)
    settings = Settings(data_dir=tmp_path, api_key=API_KEY, job_ttl=3600)
    with TestClient(create_app(settings, predictor=predictor)) as client:
        r = client.post("/v1/jobs", headers=AUTH, files={
            "table": ("rows.csv", table, "text/csv"),
            "images": ("images.zip", images, "application/zip")})
        job_id = wait_for(client.get, r.json()["id"])["id"]
        store = client.app.state.job_store
    _age_job(store, job_id, days=1)
    with TestClient(create_app(settings, predictor=predictor)) as client:
        wait_until(lambda: not store.job_dir(job_id).exists(), 10,
                   "the start-up sweep to delete the expired job's folder")
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404


def _fill(path, n: int, ts: float, blob_bytes: int = 2000) -> None:
    """n rows written as the log writes them, each with a `blob_bytes` feature vector."""
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO predictions (ts, request_id, model_version, latency_ms, label, "
            "confidence, inputs, proba, features) VALUES (?, ?, 'm', 1.0, 'a', 0.9, '{}', ?, ?)",
            [(ts, f"r{i}", b"\0" * 8, os.urandom(blob_bytes)) for i in range(n)])


def _ids(path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT id FROM predictions ORDER BY id")]


def test_prediction_log_drops_rows_older_than_its_max_age(tmp_path):
    plog = PredictionLog(tmp_path / "predictions.db", max_age_s=30 * 86400).open()
    _fill(plog.path, 50, ts=time.time() - 31 * 86400)
    _fill(plog.path, 20, ts=time.time() - 86400)
    res = plog.prune()
    assert (res.deleted_old, res.deleted_for_size) == (50, 0)
    assert _ids(plog.path) == list(range(51, 71))


def test_prediction_log_over_its_size_limit_shrinks_and_keeps_the_newest_rows(tmp_path):
    limit = 1_000_000
    plog = PredictionLog(tmp_path / "predictions.db", max_bytes=limit).open()
    _fill(plog.path, 1500, ts=time.time())
    assert plog.size_bytes() > 2 * limit
    res = plog.prune()
    assert res.deleted_for_size > 0 and res.size_bytes == plog.size_bytes() < limit
    kept = _ids(plog.path)
    assert kept == list(range(1501 - len(kept), 1501))  # the newest, without a gap
    assert res.size_bytes > limit / 2  # cut to about PRUNE_TO of the limit, not emptied


def test_a_log_from_before_retention_is_converted_and_shrunk(tmp_path):
    path = tmp_path / "predictions.db"
    with sqlite3.connect(path) as db:  # the layout older versions made: no auto_vacuum
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    _fill(path, 1000, ts=time.time())
    res = PredictionLog(path, max_bytes=500_000).prune()
    assert res.size_bytes < 500_000 and _ids(path)[-1] == 1000


def test_the_writer_thread_prunes_without_a_request(tmp_path):
    plog = PredictionLog(tmp_path / "predictions.db", flush_every_s=0.05, max_bytes=400_000,
                         max_age_s=86400)
    plog.open()
    _fill(plog.path, 10, ts=time.time() - 2 * 86400)
    plog.start()  # prunes at start: the old rows go
    try:
        wait_until(lambda: _ids(plog.path) == [], 10, "the start-up prune of the old rows",
                   detail=lambda: f"{len(_ids(plog.path))} rows left")
        _fill(plog.path, 600, ts=time.time())  # over the limit while running: cut at once
        wait_until(lambda: plog.size_bytes() < 400_000, 10, "the log to shrink under its limit",
                   detail=lambda: f"{plog.size_bytes()} bytes")
        assert _ids(plog.path)[-1] == 610
    finally:
        plog.stop()
