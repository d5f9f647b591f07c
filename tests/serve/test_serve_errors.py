"""A real server bug answers a generic JSON 500 with the request id, logs the traceback, and
leaks nothing (no exception text, no server path)."""

from __future__ import annotations

import json
import logging

from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.inference.predictor import Predictor
from modalfuse.serve.app import create_app


def test_server_bug_is_a_generic_500_and_logged(fixture_bundle, tmp_path, caplog):
    predictor = Predictor.from_path(fixture_bundle.path)
    secret_path = str(fixture_bundle.path)

    def broken(*args, **kwargs):
        raise RuntimeError(f"model file corrupt at {secret_path}")

    predictor.predict = broken  # type: ignore[method-assign]
    app = create_app(Settings(data_dir=tmp_path, log_predictions=False), predictor=predictor)
    body = json.loads((fixture_bundle.path / "bundle.json").read_text())["example"]
    with caplog.at_level(logging.ERROR, logger="modalfuse.serve"), \
            TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/predict", json=body, headers={"X-Request-ID": "bug-1"})
        ok = client.get("/health")
    assert r.status_code == 500
    assert r.json()["request_id"] == "bug-1" and r.headers["x-request-id"] == "bug-1"
    assert "internal server error" in r.json()["detail"]
    assert "RuntimeError" not in r.text and secret_path not in r.text
    assert ok.status_code == 200  # the server goes on
    logged = [rec for rec in caplog.records if rec.getMessage() == "unhandled error"]
    assert logged and logged[0].exc_info and "model file corrupt" in str(logged[0].exc_info[1])
