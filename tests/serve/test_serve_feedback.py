"""Prediction ids, POST /v1/feedback, GET /v1/monitoring/performance, the live gauges and
`modalfuse monitor --performance`, against a real app and the fixture test split."""

from __future__ import annotations

import base64
import json
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.inference.evaluate import expected_calibration_error
from modalfuse.inference.predictor import api_body, table_records
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY, AUTH

MAX_ROWS = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-feedback")


@pytest.fixture(scope="module")
def client(predictor, data_dir):
    settings = Settings(data_dir=data_dir, api_key=API_KEY, max_batch_rows=MAX_ROWS)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def scored(client, fixture_dataset, fixture_splits):
    """The test split scored through all three prediction routes: (ids, responses, truth)."""
    spec = fixture_dataset.spec
    rows = fixture_dataset.table.set_index("id").loc[fixture_splits.ids("test")].reset_index()
    bodies = [api_body(spec, rec, img) for rec, img in
              zip(table_records(spec, rows), fixture_dataset.row_images(rows), strict=True)]
    truth = rows[spec.target].astype(str).tolist()
    answers = [client.post("/v1/predict", json=bodies[0]).json()]
    upload = client.post("/v1/predict/upload", data={"fields": json.dumps(bodies[1]["fields"])},
                         files={"image": ("x.png", base64.b64decode(bodies[1]["image_base64"]))})
    answers.append(upload.json())
    rest = bodies[2:MAX_ROWS + 2]
    batch = client.post("/v1/predict/batch", json=rest).json()
    answers += batch["predictions"]
    assert all(len(a["prediction_id"]) == 32 for a in answers), answers[:2]
    return [a["prediction_id"] for a in answers], answers, truth[:len(answers)]


def _send(client, rows, replace=False, headers=AUTH):
    return client.post("/v1/feedback", json={"feedback": rows, "replace": replace},
                       headers=headers)


def test_every_scored_row_has_a_fresh_id_and_error_rows_none(client, scored, fixture_dataset):
    ids, _, _ = scored
    assert len(set(ids)) == len(ids)
    body = api_body(fixture_dataset.spec, table_records(fixture_dataset.spec,
                                                        fixture_dataset.table.head(1))[0],
                    fixture_dataset.image_bytes(
                        fixture_dataset.table.iloc[0][fixture_dataset.spec.image_column]))
    r = client.post("/v1/predict/batch", json=[body, {**body, "image_base64": "not base64!"}])
    items = r.json()["predictions"]
    assert len(items[0]["prediction_id"]) == 32 and items[1]["prediction_id"] is None
    assert items[1]["error"]


def test_the_log_stores_each_prediction_id(client, scored, data_dir):
    ids, answers, _ = scored
    client.app.state.prediction_log.flush()
    with sqlite3.connect(data_dir / "monitoring" / "predictions.db") as db:
        logged = dict(db.execute("SELECT prediction_id, label FROM predictions"))
        index = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                           "tbl_name = 'predictions'").fetchall()
    assert {i: logged[i] for i in ids} == {i: a["label"] for i, a in zip(ids, answers, strict=True)}
    assert ("predictions_pid",) in index


def test_feedback_gives_live_accuracy_equal_to_the_direct_one(client, scored, predictor):
    ids, answers, truth = scored
    labels = predictor.labels
    # Every row gets its true label, except every fifth, which gets a wrong one on purpose.
    sent = [t if i % 5 else labels[(labels.index(t) + 1) % len(labels)]
            for i, t in enumerate(truth)]
    r = _send(client, [{"prediction_id": i, "label": lab} for i, lab in zip(ids, sent, strict=True)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["stored"], body["unchanged"], body["replaced"], body["unknown"]) == (len(ids), 0, 0, 0)
    assert {x["model_version"] for x in body["results"]} == {predictor.model_version}

    perf = client.get("/v1/monitoring/performance", headers=AUTH)
    assert perf.status_code == 200, perf.text
    s = perf.json()
    m = s["models"][predictor.model_version]
    predicted = [a["label"] for a in answers]
    accuracy = np.mean([p == t for p, t in zip(predicted, sent, strict=True)])
    assert len(ids) >= 20 and 0 < accuracy < 1
    assert m["labelled"] == s["labelled"] == len(ids)
    assert m["overall"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert m["latest"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)  # all in one window
    assert m["overall"]["macro_f1"] == pytest.approx(f1_score(
        sent, predicted, average="macro", labels=sorted(set(sent) | set(predicted)),
        zero_division=0), abs=1e-12)
    proba = np.array([[a["probabilities"][lab] for lab in labels] for a in answers])
    y = np.array([labels.index(t) for t in sent])
    assert m["overall"]["ece"] == pytest.approx(expected_calibration_error(proba, y), abs=1e-5)
    # Share of traffic labelled: the one error row above is not traffic; its valid twin is.
    assert m["latest"]["labelled_share"] == pytest.approx(len(ids) / (len(ids) + 1))
    for lab, rec in m["overall"]["per_class_recall"].items():
        rows = [p for p, t in zip(predicted, sent, strict=True) if t == lab]
        assert rec == {"recall": pytest.approx(np.mean([p == lab for p in rows])),
                       "support": len(rows)}


def test_feedback_right_after_its_prediction_finds_it(client, fixture_dataset):
    # No flush: the route waits for the log's writer to have written what was queued.
    spec = fixture_dataset.spec
    body = api_body(spec, table_records(spec, fixture_dataset.table.head(1))[0],
                    fixture_dataset.image_bytes(fixture_dataset.table.iloc[0][spec.image_column]))
    answer = client.post("/v1/predict", json=body).json()
    r = _send(client, [{"prediction_id": answer["prediction_id"], "label": answer["label"]}])
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text


def test_the_same_label_twice_is_one_record(client, scored, data_dir):
    ids, _, truth = scored
    first = _send(client, [{"prediction_id": ids[1], "label": truth[1]}])
    again = _send(client, [{"prediction_id": ids[1], "label": truth[1]},
                           {"prediction_id": ids[1], "label": truth[1]}])
    assert first.status_code == again.status_code == 200
    assert again.json()["unchanged"] == 2 and again.json()["stored"] == 0
    with sqlite3.connect(data_dir / "monitoring" / "predictions.db") as db:
        assert db.execute("SELECT COUNT(*) FROM feedback WHERE prediction_id = ?",
                          (ids[1],)).fetchone()[0] == 1


def test_a_different_label_is_a_409_unless_replace(client, scored, predictor):
    ids, _, truth = scored
    other = next(lab for lab in predictor.labels if lab != truth[1])
    r = _send(client, [{"prediction_id": ids[2], "label": truth[2]},
                       {"prediction_id": ids[1], "label": other}])
    assert r.status_code == 409
    msg = r.json()["detail"][0]
    assert msg["loc"] == ["body", "feedback", 1, "label"]
    assert ids[1] in msg["msg"] and repr(truth[1]) in msg["msg"] and repr(other) in msg["msg"]
    r = _send(client, [{"prediction_id": ids[1], "label": other}], replace=True)
    assert r.status_code == 200
    res = r.json()["results"][0]
    assert (r.json()["replaced"], res["status"], res["previous_label"]) == (1, "replaced", truth[1])
    _send(client, [{"prediction_id": ids[1], "label": truth[1]}], replace=True)  # as it was


def test_a_label_the_model_does_not_have_is_a_422_naming_the_allowed_ones(client, scored,
                                                                         predictor, data_dir):
    ids, _, truth = scored
    with sqlite3.connect(data_dir / "monitoring" / "predictions.db") as db:
        before = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    r = _send(client, [{"prediction_id": ids[0], "label": truth[0]},
                       {"prediction_id": ids[3], "label": "Fyre"}], replace=True)
    assert r.status_code == 422
    d = r.json()["detail"]
    assert len(d) == 1 and d[0]["loc"] == ["body", "feedback", 1, "label"]
    assert "'Fyre'" in d[0]["msg"] and ", ".join(predictor.labels) in d[0]["msg"]
    with sqlite3.connect(data_dir / "monitoring" / "predictions.db") as db:
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == before


def test_an_unknown_id_is_answered_per_row_and_the_others_are_stored(client, scored):
    ids, _, truth = scored
    r = _send(client, [{"prediction_id": "f" * 32, "label": "Fire"},
                       {"prediction_id": ids[4], "label": truth[4]}])
    assert r.status_code == 200
    body = r.json()
    assert body["unknown"] == 1 and body["results"][0]["status"] == "unknown"
    assert body["results"][0]["model_version"] is None
    assert body["results"][1]["status"] == "unchanged"


@pytest.mark.parametrize("body", [
    {},
    {"feedback": []},
    {"feedback": [{"prediction_id": "not-an-id", "label": "Fire"}]},
    {"feedback": [{"prediction_id": "a" * 32, "label": 3}]},
    {"feedback": [{"prediction_id": "a" * 32, "label": ""}]},
    {"feedback": [{"prediction_id": "a" * 32, "label": "Fire", "extra": 1}]},
    {"feedback": [{"prediction_id": "a" * 32, "label": "Fire"}], "replace": "yes"},
    [1, 2],
])
def test_malformed_bodies_are_422(client, body):
    r = client.post("/v1/feedback", json=body, headers=AUTH)
    assert r.status_code == 422, r.text


def test_more_rows_than_the_batch_limit_is_a_413(client):
    rows = [{"prediction_id": f"{i:032x}", "label": "Fire"} for i in range(MAX_ROWS + 1)]
    r = _send(client, rows)
    assert r.status_code == 413 and str(MAX_ROWS) in r.json()["detail"]


def test_feedback_and_performance_need_the_key(client, predictor, tmp_path):
    row = [{"prediction_id": "a" * 32, "label": "Fire"}]
    assert _send(client, row, headers={}).status_code == 401
    assert _send(client, row, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/monitoring/performance").status_code == 401
    with TestClient(create_app(Settings(data_dir=tmp_path), predictor=predictor)) as keyless:
        assert _send(keyless, row, headers={}).status_code == 403
        assert keyless.get("/v1/monitoring/performance").status_code == 403


def test_live_gauges_on_metrics(client, scored, predictor):
    _send(client, [{"prediction_id": scored[0][5], "label": scored[2][5]}])
    perf = client.get("/v1/monitoring/performance", headers=AUTH).json()
    latest = perf["models"][predictor.model_version]["latest"]
    text = client.get("/metrics").text
    v = predictor.model_version

    def value(name: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(f'{name}{{model_version="{v}"'))
        return float(line.rsplit(" ", 1)[1])

    assert value("modalfuse_live_accuracy") == pytest.approx(latest["accuracy"])
    assert value("modalfuse_live_macro_f1") == pytest.approx(latest["macro_f1"])
    assert value("modalfuse_live_ece") == pytest.approx(latest["ece"])
    assert value("modalfuse_labelled_share") == pytest.approx(latest["labelled_share"])
    assert value("modalfuse_performance_alert") == (1.0 if latest["alerts"] else 0.0)
    assert value("modalfuse_feedback_total") >= len(scored[0])
    assert 'modalfuse_feedback_total{model_version="unknown",outcome="unknown"}' in text


def test_monitor_performance_writes_its_files_and_exits_3_on_an_alert(client, scored, data_dir,
                                                                      predictor, tmp_path,
                                                                      monkeypatch):
    client.app.state.prediction_log.flush()
    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(data_dir))
    calm = tmp_path / "calm"
    args = ["monitor", "--bundle", str(predictor.bundle.path), "--no-drift", "--performance"]
    monkeypatch.setenv("MODALFUSE_ALERT_MIN_ACCURACY", "0")
    monkeypatch.setenv("MODALFUSE_ALERT_MIN_MACRO_F1", "0")
    monkeypatch.setenv("MODALFUSE_ALERT_MAX_ECE", "1")
    monkeypatch.setenv("MODALFUSE_PERF_MIN_LABELS", "10")  # the test split has ~27 rows
    r = CliRunner().invoke(cli_app, [*args, "--out", str(calm)])
    assert r.exit_code == 0, r.output
    assert "live performance" in r.output
    summary = json.loads((calm / "performance.json").read_text())
    assert summary["status"] == "ok" and summary["labelled"] >= len(scored[0])
    assert (calm / "performance.png").read_bytes()[:4] == b"\x89PNG"
    assert (calm / "performance.html").stat().st_size > 10_000
    alert = tmp_path / "alert"
    monkeypatch.setenv("MODALFUSE_ALERT_MIN_ACCURACY", "0.999")
    r = CliRunner().invoke(cli_app, [*args, "--out", str(alert)])
    assert r.exit_code == 3, r.output
    summary = json.loads((alert / "performance.json").read_text())
    assert summary["status"] == "alert" and "MODALFUSE_ALERT_MIN_ACCURACY" in r.output
    assert summary["alerts"][0]["model_version"] == predictor.model_version


def test_a_lone_surrogate_in_a_label_is_a_422_not_a_500(client, scored):
    ids, _, _ = scored
    body = '{"feedback": [{"prediction_id": "' + ids[0] + '", "label": "\\ud800"}]}'
    r = client.post("/v1/feedback", content=body.encode(), headers={**AUTH,
                    "content-type": "application/json"})
    assert r.status_code == 422, r.text


def test_a_failing_observer_never_fails_the_prediction(predictor, fixture_dataset):
    rows = fixture_dataset.table.head(2)
    records, images = table_records(fixture_dataset.spec, rows), fixture_dataset.row_images(rows)

    def broken(event):
        raise RuntimeError("an observer bug")

    predictor.observers.append(broken)
    try:
        assert len(predictor.predict(records, images)) == 2
    finally:
        predictor.observers.remove(broken)
