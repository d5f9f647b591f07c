"""Shadow and canary releases with two real bundles: a canary answers its share of clients,
sticky by client key, in every route; a shadow never changes or slows the champion's answers,
logs both answers, and drops (counted) what it cannot keep up with; the admin routes need the
key and refuse a challenger that takes other inputs."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from modalfuse.bench.servers import free_port
from modalfuse.config import Settings
from modalfuse.inference.predictor import Predictor, api_body, table_records
from modalfuse.monitor.shadowlog import (
    ShadowLog,
    ShadowRow,
    prediction_db,
    shadow_markdown,
    shadow_report,
)
from modalfuse.serve.app import create_app
from modalfuse.serve.canary import client_point
from prod_helpers import API_KEY, AUTH, wait_healthy, wait_until


@pytest.fixture(scope="module")
def other_bundle(fixture_dataset, fixture_splits, tmp_path_factory, fixture_bundle):
    """A second real bundle over the same inputs, answering differently."""
    from modalfuse.training.train import TrainConfig, train

    other = train(fixture_dataset, fixture_splits, tmp_path_factory.mktemp("other") / "b",
                  TrainConfig(num_boost_round=8, cv=False, seed=3), evaluate_test=False)
    assert other.model_version != fixture_bundle.model_version
    return other


@pytest.fixture(scope="module")
def incompatible_bundle(fixture_bundle, tmp_path_factory):
    """A copy of the served bundle whose spec takes another image size."""
    path = tmp_path_factory.mktemp("incompatible") / "b"
    shutil.copytree(fixture_bundle.path, path)
    spec = json.loads((path / "spec.json").read_text())
    spec["image_size"] = int(spec["image_size"]) * 2
    (path / "spec.json").write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def bodies(fixture_dataset):
    """/v1/predict bodies of the fixture rows (distinct records and images)."""
    spec = fixture_dataset.spec
    table = fixture_dataset.table
    records = table_records(spec, table)
    return [api_body(spec, rec, fixture_dataset.image_bytes(name))
            for rec, name in zip(records, table[spec.image_column], strict=True)][:24]


def _app(fixture_bundle, tmp_path, **settings):
    s = Settings(data_dir=tmp_path, api_key=API_KEY, bundle=fixture_bundle.path,
                 log_predictions=True, **settings)
    return create_app(s, predictor=Predictor.from_path(fixture_bundle.path))


def test_client_points_are_stable_and_uniform():
    assert client_point("a") == client_point("a") and client_point("a") != client_point("b")
    points = [client_point(f"client-{i}") for i in range(20_000)]
    assert all(0 <= p < 1 for p in points)
    assert abs(sum(p < 0.25 for p in points) / len(points) - 0.25) < 0.01


def test_canary_answers_its_share_sticky_in_every_route(fixture_bundle, other_bundle, bodies,
                                                        tmp_path):
    champion, challenger = fixture_bundle.model_version, other_bundle.model_version
    with TestClient(_app(fixture_bundle, tmp_path)) as client:
        r = client.post("/admin/canary", headers=AUTH,
                        json={"share": 0.2, "bundle": str(other_bundle.path)})
        assert r.status_code == 200, r.text
        assert r.json()["canary"]["model_version"] == challenger
        body = bodies[0]
        versions = [client.post("/v1/predict", json=body,
                                headers={"X-Client-Key": f"user-{i}"}).json()["model_version"]
                    for i in range(2000)]
        share = versions.count(challenger) / len(versions)
        assert set(versions) == {champion, challenger}
        assert abs(share - 0.2) <= 0.03, share

        # One client key always gets one model, in every route that answers with a model.
        in_canary = next(f"user-{i}" for i in range(2000) if client_point(f"x-client-key:user-{i}")
                         < 0.2)
        outside = next(f"user-{i}" for i in range(2000) if client_point(f"x-client-key:user-{i}")
                       >= 0.2)
        image = io.BytesIO(base64.b64decode(body["image_base64"]))
        for key, expected in ((in_canary, challenger), (outside, champion)):
            h = {"X-Client-Key": key}
            got = {client.post("/v1/predict", json=body, headers=h).json()["model_version"]
                   for _ in range(10)}
            got.add(client.post("/v1/predict/batch", json=[body, body],
                                headers=h).json()["model_version"])
            image.seek(0)
            got.add(client.post("/v1/predict/upload", headers=h,
                                files={"image": ("x.png", image, "image/png")},
                                data={"fields": json.dumps(body["fields"])}).json()[
                                    "model_version"])
            got.add(client.post("/v1/explain", json=body, headers=h).json()["model_version"])
            got.add(client.get("/v1/model", headers=h).json()["model_version"])
            assert got == {expected}, (key, got)

        # Metrics and the prediction log see the canary's rows under its own version.
        text = client.get("/metrics").text
        assert f'model_version="{challenger}"' in text and f'model_version="{champion}"' in text
        plog = client.app.state.prediction_log
        plog.flush()
        assert len(plog.read(model_version=challenger)) > 0

        # Share changes keep the canary's clients; share 0 ends it.
        assert client.post("/admin/canary", headers=AUTH,
                           json={"share": 0.5}).json()["canary"]["share"] == 0.5
        h = {"X-Client-Key": in_canary}
        assert client.post("/v1/predict", json=body, headers=h).json()["model_version"] == challenger
        r = client.post("/admin/canary", headers=AUTH, json={"share": 0})
        assert r.json()["canary"] is None and r.json()["ended"]["canary"]["reason"]
        assert client.post("/v1/predict", json=body, headers=h).json()["model_version"] == champion
        assert client.delete("/admin/canary", headers=AUTH).status_code == 404


def test_canary_ends_on_rollback_and_on_promotion(fixture_bundle, other_bundle, bodies, tmp_path):
    challenger = other_bundle.model_version
    with TestClient(_app(fixture_bundle, tmp_path, canary_share=1.0,
                         canary_bundle=other_bundle.path)) as client:
        assert client.post("/v1/predict", json=bodies[0]).json()["model_version"] == challenger
        r = client.delete("/admin/canary", headers=AUTH)  # rollback
        assert r.status_code == 200 and r.json()["canary"] is None
        assert client.post("/v1/predict",
                           json=bodies[0]).json()["model_version"] == fixture_bundle.model_version
        client.post("/admin/canary", headers=AUTH,
                    json={"share": 0.3, "bundle": str(other_bundle.path)})
        r = client.post("/admin/reload", headers=AUTH, json={"bundle": str(other_bundle.path)})
        assert r.status_code == 200, r.text
        releases = client.get("/admin/releases", headers=AUTH).json()
        assert releases["canary"] is None
        assert releases["ended"]["canary"]["reason"].startswith("promoted")
        assert releases["champion"]["model_version"] == challenger


def test_shadow_under_load_keeps_answers_and_logs_both(fixture_bundle, other_bundle, bodies,
                                                       tmp_path):
    with TestClient(_app(fixture_bundle, tmp_path / "plain")) as client:
        expected = [client.post("/v1/predict", json=b).json() for b in bodies]
    with TestClient(_app(fixture_bundle, tmp_path / "shadow")) as client:
        r = client.post("/admin/shadow", headers=AUTH, json={"bundle": str(other_bundle.path)})
        assert r.status_code == 200, r.text
        assert r.json()["shadow"]["model_version"] == other_bundle.model_version

        def call(i: int) -> tuple[int, dict]:
            return i % len(bodies), client.post("/v1/predict", json=bodies[i % len(bodies)]).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(400)))
        for i, got in answers:
            got.pop("prediction_id", None)  # a fresh id per request, where routes give one
            want = dict(expected[i])
            want.pop("prediction_id", None)
            assert got == want
        shadow = client.app.state.shadow.current
        assert shadow.flush(30)
        state = client.get("/admin/releases", headers=AUTH).json()["shadow"]
        assert state["scored"] + state["dropped"] == 400 and state["scored"] > 0
        assert 0 <= state["agreement"] <= 1
        metrics = client.get("/metrics").text
        assert "modalfuse_shadow_scored_total" in metrics
        assert "modalfuse_shadow_agreement" in metrics
        assert client.delete("/admin/shadow", headers=AUTH).status_code == 200
        assert client.delete("/admin/shadow", headers=AUTH).status_code == 404

    report = shadow_report(tmp_path / "shadow")
    (pair,) = report["pairs"]
    assert (pair["champion_version"], pair["challenger_version"]) == (
        fixture_bundle.model_version, other_bundle.model_version)
    assert pair["rows"] == state["scored"] and pair["agreement"] == pytest.approx(
        state["agreement"])
    assert "agreement" in shadow_markdown(report)
    with sqlite3.connect(prediction_db(tmp_path / "shadow")) as db:
        champion_labels = {r[0] for r in db.execute("SELECT champion_label FROM shadow")}
    assert champion_labels <= {e["label"] for e in expected}
    # `modalfuse monitor --shadow` reports the same rows, as files and a table.
    from typer.testing import CliRunner

    from modalfuse.cli import app as cli_app

    res = CliRunner().invoke(cli_app, ["monitor", "--bundle", str(fixture_bundle.path),
                                       "--no-drift", "--no-performance", "--shadow",
                                       "--out", str(tmp_path / "report")],
                             env={"MODALFUSE_DATA_DIR": str(tmp_path / "shadow")})
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "report" / "shadow_report.json").read_text())
    assert saved["pairs"][0]["rows"] == state["scored"] and "agreement" in res.output


def test_a_full_shadow_queue_drops_and_counts_and_never_blocks(fixture_bundle, other_bundle,
                                                                bodies, tmp_path):
    with TestClient(_app(fixture_bundle, tmp_path, shadow_bundle=other_bundle.path,
                         shadow_queue_size=2)) as client:
        shadow = client.app.state.shadow.current
        assert shadow is not None and shadow.wait_ready(60)
        os.kill(shadow.pid, signal.SIGSTOP)  # the challenger's scorer hangs until the test lets it go
        try:
            t0 = time.perf_counter()
            for b in bodies[:20]:
                assert client.post("/v1/predict", json=b).status_code == 200
            elapsed = time.perf_counter() - t0
            assert elapsed < 10, elapsed  # the hung challenger did not hold a request
            state = client.get("/admin/releases", headers=AUTH).json()["shadow"]
            assert state["dropped"] >= 20 - 2  # the queue holds two rows
            assert "modalfuse_shadow_dropped_total " + f"{float(state['dropped'])}" in (
                client.get("/metrics").text)
        finally:
            os.kill(shadow.pid, signal.SIGCONT)
        assert shadow.flush(30)
    report = shadow_report(tmp_path)
    assert report["overall"]["dropped"] == state["dropped"]
    assert report["overall"]["rows"] + report["overall"]["dropped"] == 20


def test_admin_release_routes_need_the_key_and_refuse_other_inputs(fixture_bundle, other_bundle,
                                                                   incompatible_bundle, tmp_path):
    with TestClient(_app(fixture_bundle, tmp_path)) as client:
        calls = [("GET", "/admin/releases", None),
                 ("POST", "/admin/shadow", {"bundle": str(other_bundle.path)}),
                 ("DELETE", "/admin/shadow", None),
                 ("POST", "/admin/canary", {"share": 0.1, "bundle": str(other_bundle.path)}),
                 ("DELETE", "/admin/canary", None)]
        for method, path, payload in calls:
            for headers in ({}, {"X-API-Key": "wrong-key-0123456789abcdef"}):
                r = client.request(method, path, json=payload, headers=headers)
                assert r.status_code == 401, (method, path, r.status_code)
        assert client.get("/admin/releases", headers=AUTH).json()["shadow"] is None
        for path, payload in (("/admin/shadow", {"bundle": str(incompatible_bundle)}),
                              ("/admin/canary", {"share": 0.5, "bundle": str(incompatible_bundle)})):
            r = client.post(path, headers=AUTH, json=payload)
            assert r.status_code == 409 and "different inputs" in r.json()["detail"], r.text
        assert client.post("/admin/canary", headers=AUTH, json={}).status_code == 422
        # Nothing named: the server's own choice, re-resolved (what a reload would load).
        r = client.post("/admin/shadow", headers=AUTH, json={})
        assert r.json()["shadow"]["model_version"] == fixture_bundle.model_version, r.text
        assert client.delete("/admin/shadow", headers=AUTH).status_code == 200
        assert client.post("/admin/canary", headers=AUTH, json={"share": 2}).status_code == 422
        assert client.post("/admin/shadow", headers=AUTH,
                           json={"bundle": str(tmp_path / "none")}).status_code == 409
        releases = client.get("/admin/releases", headers=AUTH).json()
        assert releases["shadow"] is None and releases["canary"] is None


def test_shadow_report_scores_both_models_on_feedback(tmp_path):
    log = ShadowLog(prediction_db(tmp_path)).open()
    rows = [ShadowRow(100.0 + i, f"p{i}", "champ", "chall", champ, chall, b"\0" * 8)
            for i, (champ, chall) in enumerate([("a", "a"), ("a", "b"), ("b", "b"), ("c", "a")])]
    log.write(rows, {"chall": ["a", "b"]})
    log.record_drops("champ", "chall", 3)
    assert shadow_report(tmp_path)["feedback"] is False
    with sqlite3.connect(prediction_db(tmp_path)) as db:
        db.execute("CREATE TABLE feedback (prediction_id TEXT, label TEXT, ts REAL)")
        db.executemany("INSERT INTO feedback VALUES (?, ?, 0)",
                       [("p0", "a"), ("p1", "a"), ("p1", "b"), ("p2", "b")])  # p1 corrected
    report = shadow_report(tmp_path)
    o = report["overall"]
    assert (o["rows"], o["agree"], o["dropped"], o["labelled"]) == (4, 2, 3, 3)
    assert o["agreement"] == 0.5
    assert o["champion_accuracy"] == pytest.approx(2 / 3)  # p0 a=a, p1 a!=b, p2 b=b
    assert o["challenger_accuracy"] == 1.0
    assert shadow_report(tmp_path, since=102.0)["overall"]["rows"] == 2
    assert "challenger acc" in shadow_markdown(report)
    assert shadow_report(tmp_path / "nothing")["overall"]["rows"] == 0


@pytest.mark.slow  # starts `modalfuse serve`
def test_modalfuse_serve_runs_a_canary_and_a_shadow(fixture_bundle, other_bundle, bodies,
                                                    tmp_path):
    port = free_port()
    env = {**os.environ, "MODALFUSE_DATA_DIR": str(tmp_path), "MODALFUSE_API_KEY": API_KEY,
           "MODALFUSE_SHADOW_BUNDLE": str(other_bundle.path), "MODALFUSE_CANARY_SHARE": "0.5",
           "MODALFUSE_CANARY_BUNDLE": str(other_bundle.path)}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "modalfuse.cli", "serve", "--bundle",
                                 str(fixture_bundle.path), "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, err_path, timeout=120)
        with httpx.Client(base_url=url, timeout=30) as http:
            seen: dict[str, set[str]] = {}
            answers = []
            for i in range(60):
                key = f"client-{i % 12}"
                r = http.post("/v1/predict", json=bodies[i % len(bodies)],
                              headers={"X-Client-Key": key})
                assert r.status_code == 200, r.text
                seen.setdefault(key, set()).add(r.json()["model_version"])
                answers.append(r.json())
            # Feedback on a real server becomes live performance, per answering model: here the
            # "true" label is the first 40 answers' own and a wrong one for the last 20.
            wrong = {a["prediction_id"]: next(lab for lab in a["probabilities"] if lab != a["label"])
                     for a in answers[40:]}
            fb = http.post("/v1/feedback", headers=AUTH, json={"feedback": [
                {"prediction_id": a["prediction_id"],
                 "label": wrong.get(a["prediction_id"], a["label"])} for a in answers]})
            assert fb.status_code == 200 and fb.json()["stored"] == 60, fb.text
            perf = http.get("/v1/monitoring/performance", headers=AUTH).json()
            for version, m in perf["models"].items():
                mine = [a for a in answers if a["model_version"] == version]
                right = sum(a["prediction_id"] not in wrong for a in mine)
                assert m["labelled"] == len(mine), m
                assert m["overall"]["accuracy"] == pytest.approx(right / len(mine)), m["overall"]
            assert set(perf["models"]) == {fixture_bundle.model_version, other_bundle.model_version}
            assert all(len(v) == 1 for v in seen.values()), seen  # sticky
            assert set().union(*seen.values()) == {fixture_bundle.model_version,
                                                   other_bundle.model_version}
            def shadow_caught_up() -> dict | None:
                releases = http.get("/admin/releases", headers=AUTH).json()
                shadow = releases["shadow"]
                return releases if shadow["scored"] and not shadow["pending"] else None

            releases = wait_until(shadow_caught_up, 30, "the shadow to score its queue",
                                  interval=0.1,
                                  detail=lambda: http.get("/admin/releases", headers=AUTH).json())
            assert releases["canary"]["share"] == 0.5
            assert http.delete("/admin/canary", headers=AUTH).status_code == 200
            assert {http.post("/v1/predict", json=bodies[0], headers={"X-Client-Key": k}).json()[
                "model_version"] for k in seen} == {fixture_bundle.model_version}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = shadow_report(tmp_path)
    # Only the champion's answers are shadowed, never the canary's.
    assert 0 < report["overall"]["rows"] < 60 + len(seen)
    assert {p["champion_version"] for p in report["pairs"]} == {fixture_bundle.model_version}


def test_an_app_that_fails_to_build_leaves_no_shadow_process(fixture_bundle, other_bundle, tmp_path):
    import multiprocessing

    before = set(multiprocessing.active_children())
    with pytest.raises(ValueError, match="canary"):  # a canary share with no canary model
        _app(fixture_bundle, tmp_path, shadow_bundle=other_bundle.path, canary_share=0.1)
    assert set(multiprocessing.active_children()) == before


def test_canary_stickiness_ignores_the_shared_api_key(fixture_bundle, other_bundle, bodies,
                                                      tmp_path):
    """Every keyed client sends the server's one API key: the split must not follow it."""
    with TestClient(_app(fixture_bundle, tmp_path)) as client:
        r = client.post("/admin/canary", headers=AUTH,
                        json={"share": 0.5, "bundle": str(other_bundle.path)})
        assert r.status_code == 200, r.text
        versions = {client.post("/v1/predict", json=bodies[0],
                                headers={**AUTH, "X-Forwarded-For": f"10.0.0.{i}"}).json()[
                                    "model_version"] for i in range(40)}
        assert versions == {fixture_bundle.model_version, other_bundle.model_version}
