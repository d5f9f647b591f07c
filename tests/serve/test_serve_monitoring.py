"""Prediction log, Prometheus metrics, request ids, drift/skew summary and `modalfuse monitor`."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.features.image import encode_png
from modalfuse.inference.predictor import api_body, table_records
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY, AUTH


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, fixture_dataset):
    d = tmp_path_factory.mktemp("serve-monitoring")
    (d / "datasets").mkdir()
    (d / "datasets" / fixture_dataset.spec.name).symlink_to(fixture_dataset.root)
    return d


@pytest.fixture(scope="module")
def client(predictor, data_dir):
    settings = Settings(data_dir=data_dir, api_key=API_KEY)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        yield c


def _bodies(dataset, n, change=None, image_change=None):
    spec = dataset.spec
    rows = dataset.table.head(n)
    out = []
    for rec, name in zip(table_records(spec, rows), rows[spec.image_column], strict=True):
        img = dataset.image_bytes(name)
        if image_change is not None:
            img = image_change(img)
        body = api_body(spec, {**rec, **(change or {})}, img)
        out.append(body)
    return out


def _flush(client):
    client.app.state.prediction_log.flush()


def test_request_id_is_echoed_or_made(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32
    # An id that is not safe to log is replaced, not echoed.
    assert client.get("/health", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"] != "x" * 500


def test_every_prediction_is_logged_and_counted(client, fixture_dataset, predictor, data_dir):
    bodies = _bodies(fixture_dataset, 6)
    for b in bodies[:3]:
        r = client.post("/v1/predict", json=b, headers={"X-Request-ID": "req-single"})
        assert r.status_code == 200
    batch = [{"fields": b["fields"], "image_base64": b["image_base64"]} for b in bodies[3:]]
    batch.append({"fields": {"hp": -5}, "image_base64": "AAAA"})  # a bad row: not logged
    r = client.post("/v1/predict/batch", json=batch, headers={"X-Request-ID": "req-batch"})
    assert r.status_code == 200 and r.json()["errors"] == 1
    _flush(client)
    with sqlite3.connect(data_dir / "monitoring" / "predictions.db") as db:
        rows = db.execute("SELECT request_id, model_version, label, latency_ms, inputs, features "
                          "FROM predictions WHERE request_id LIKE 'req-%'").fetchall()
    assert [r[0] for r in rows] == ["req-single"] * 3 + ["req-batch"] * 3
    assert {r[1] for r in rows} == {predictor.model_version}
    assert all(r[2] in predictor.labels and r[3] > 0 for r in rows)
    assert json.loads(rows[0][4])["hp"] == bodies[0]["fields"]["hp"]
    n_features = len(predictor.bundle.preprocessor.tabular_names) + len(
        predictor.bundle.preprocessor.image_stat_names)
    assert len(np.frombuffer(rows[0][5], dtype=np.float32)) == n_features

    text = client.get("/metrics").text
    assert 'modalfuse_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert "modalfuse_http_request_duration_seconds_bucket" in text
    assert "modalfuse_predictions_total{label=" in text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("modalfuse_predictions_total{"))
    assert total >= 6


def test_errors_are_counted_by_route(client):
    client.post("/v1/predict", json={"fields": {}, "image_base64": "!!"})
    text = client.get("/metrics").text
    assert 'modalfuse_http_errors_total{route="/v1/predict",status_class="4xx"}' in text


def test_drift_summary_needs_the_key_and_sees_drift(client, fixture_dataset):
    assert client.get("/v1/monitoring/drift").status_code == 401
    # Serving traffic like training: nothing drifts in the fields.
    for b in _bodies(fixture_dataset, 60):
        client.post("/v1/predict", json=b)
    _flush(client)
    calm = client.get("/v1/monitoring/drift", headers=AUTH)
    assert calm.status_code == 200, calm.text
    s = calm.json()
    assert s["serving_rows"] >= 60 and s["reference_rows"] > 50
    assert "hp" not in s["data_drift"]["drifted_fields"]
    # Then hp triples: data drift on hp and skew on its feature, named in the summary.
    for b in _bodies(fixture_dataset, 60, change={"hp": 250}):
        client.post("/v1/predict", json=b)
    _flush(client)
    s = client.get("/v1/monitoring/drift", headers=AUTH).json()
    assert s["status"] == "drift"
    assert "hp" in s["data_drift"]["drifted_fields"]
    assert "hp" in s["skew"]["skewed_features"]


def _grey(png: bytes) -> bytes:
    import io

    im = Image.open(io.BytesIO(png)).convert("LA").convert("RGBA")
    return encode_png(np.asarray(im))


def test_monitor_command_writes_evidently_report_and_skew_png(fixture_dataset, predictor,
                                                              tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    (data_dir / "datasets").mkdir(parents=True)
    (data_dir / "datasets" / fixture_dataset.spec.name).symlink_to(fixture_dataset.root)
    # A serving bug that only the skew check can see: images lose their colour on the way in,
    # while the table fields arrive exactly as in training.
    with TestClient(create_app(Settings(data_dir=data_dir), predictor=predictor)) as c:
        for b in _bodies(fixture_dataset, 60, image_change=_grey):
            assert c.post("/v1/predict", json=b).status_code == 200
        _flush(c)
    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(data_dir))
    out = tmp_path / "report"
    r = CliRunner().invoke(cli_app, ["monitor", "--bundle", str(predictor.bundle.path),
                                     "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "drift.html").stat().st_size > 10_000
    assert (out / "skew.png").read_bytes()[:4] == b"\x89PNG"
    ev = summary["evidently"]
    assert {"hp", "predicted_label"} <= set(ev["columns"])
    assert ev["columns"]["hp"]["drift"] is False
    assert {"img_frac_grey", "img_mean_s"} <= set(summary["skew"]["skewed_features"])
    assert not [f for f in summary["skew"]["skewed_features"] if not f.startswith("img_")]
