"""Secrets stay out of logs: the key only in its header, `modalfuse serve` logs JSON lines."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.serve.app import create_app
from modalfuse.serve.logging import RedactQuery, redact_query
from prod_helpers import API_KEY, AUTH, wait_healthy

SECRET = "s3cr3t-in-the-url-0123456789"
NO_JOB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("target", "logged"), [
    ("/v1/jobs?api_key=" + SECRET, "/v1/jobs?api_key=REDACTED"),
    (f"/x?format=csv&token={SECRET}&flag", "/x?format=REDACTED&token=REDACTED&REDACTED"),
    (f"/x?{SECRET}", "/x?REDACTED"),
    ("/health", "/health"),
])
def test_every_query_value_is_redacted(target, logged):
    assert redact_query(target) == logged


def test_uvicorn_access_records_lose_their_query_values():
    record = logging.makeLogRecord({"msg": '%s - "%s %s HTTP/%s" %d',
                                    "args": ("127.0.0.1:1", "GET", f"/a?api_key={SECRET}",
                                             "1.1", 200)})
    assert RedactQuery().filter(record)
    assert SECRET not in record.getMessage() and "api_key=REDACTED" in record.getMessage()


def test_a_key_in_the_url_is_refused_and_told_to_use_the_header(predictor, tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path, api_key=API_KEY),
                               predictor=predictor)) as client:
        for name in ("api_key", "API_KEY", "apikey"):
            r = client.get(f"/v1/jobs/{NO_JOB}", params={name: API_KEY})
            assert r.status_code == 401
            assert "X-API-Key header" in r.json()["detail"] and name in r.json()["detail"]
        # Even next to a good header: the key in the URL has leaked and must not work.
        assert client.get(f"/v1/jobs/{NO_JOB}", params={"api_key": API_KEY},
                          headers=AUTH).status_code == 401
        assert client.get(f"/v1/jobs/{NO_JOB}", headers=AUTH).status_code == 404
        assert "api_key" not in json.dumps(client.get("/openapi.json").json()["paths"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts `modalfuse serve`
def test_modalfuse_serve_logs_json_lines_with_request_ids_and_no_secret(fixture_bundle, tmp_path):
    port = _free_port()
    env = {**os.environ, "MODALFUSE_DATA_DIR": str(tmp_path), "MODALFUSE_API_KEY": API_KEY,
           "COLUMNS": "200"}
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "modalfuse.cli", "serve", "--bundle",
                                 str(fixture_bundle.path), "--port", str(port)],
                                env=env, stdout=out, stderr=err, text=True)
    url = f"http://127.0.0.1:{port}"
    sent: dict[str, int] = {}
    try:
        wait_healthy(url, proc, err_path, timeout=120)
        calls = [("req-query-key", f"/v1/jobs/{NO_JOB}?api_key={SECRET}", {}, 401),
                 ("req-header-key", f"/v1/jobs/{NO_JOB}", AUTH, 404),
                 ("req-wrong-key", f"/v1/jobs/{NO_JOB}", {"X-API-Key": SECRET}, 401),
                 ("req-open-route", f"/health?token={SECRET}&format=x", {}, 200)]
        for rid, path, headers, status in calls:
            r = httpx.get(url + path, headers={"X-Request-ID": rid, **headers}, timeout=10)
            assert r.status_code == status, (path, r.text)
            sent[rid] = status
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    stdout, stderr = out_path.read_text(), err_path.read_text()
    for secret in (SECRET, API_KEY):
        assert secret not in stdout and secret not in stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    access = {e["request_id"]: e for e in lines if e["logger"] == "modalfuse.access"}
    assert {rid: access[rid]["status"] for rid in sent} == sent
    assert not any(e["logger"] == "uvicorn.access" for e in lines)  # ours replaces it
    # Lines without a request id are the server's own start and stop, never a request's.
    assert {e["logger"] for e in lines if "request_id" not in e} <= {"uvicorn.error"}
    assert any("Uvicorn running" in e["message"] for e in lines)
    # stdout holds the start-up banner for people, not logs.
    assert "modalfuse API on" in stdout
