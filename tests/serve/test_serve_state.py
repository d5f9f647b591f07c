"""The served model is one object swapped whole: a reload never mixes two models in one
answer, and afterwards every consumer (predict, explain, jobs, /v1/model, metrics, the
prediction log) reports the new one."""

from __future__ import annotations

import io
import threading

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.inference.predictor import Predictor
from modalfuse.serve.app import create_app
from modalfuse.serve.state import ModelHolder, ServedModel
from prod_helpers import API_KEY, AUTH, job_inputs, wait_for, wait_until


@pytest.fixture(scope="module")
def other_bundle(fixture_dataset, fixture_splits, tmp_path_factory, fixture_bundle):
    """A second real bundle over the same inputs, answering differently."""
    from modalfuse.training.train import TrainConfig, train

    other = train(fixture_dataset, fixture_splits, tmp_path_factory.mktemp("other") / "b",
                  TrainConfig(num_boost_round=8, cv=False, seed=3), evaluate_test=False)
    assert other.model_version != fixture_bundle.model_version
    return other


@pytest.fixture
def client(fixture_bundle, tmp_path):
    settings = Settings(data_dir=tmp_path, api_key=API_KEY, job_chunk_rows=7,
                        log_predictions=True, bundle=fixture_bundle.path)
    with TestClient(create_app(settings, predictor=Predictor.from_path(fixture_bundle.path))) as c:
        yield c


def _reload(client, bundle) -> dict:
    r = client.post("/admin/reload", headers=AUTH, json={"bundle": str(bundle.path)})
    assert r.status_code == 200, r.text
    return r.json()


def _probabilities(client, body) -> tuple[str, dict[str, float]]:
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()["model_version"], r.json()["probabilities"]


def _wait_for_answers(seen: list, more: int, failures: list[str]) -> None:
    """Wait until the hammering threads have added `more` answers to `seen`."""
    answered = len(seen)
    wait_until(lambda: len(seen) >= answered + more, 30, f"{more} more answers",
               interval=0.01, detail=lambda: failures[:3])


def test_the_served_model_owns_its_explainer(predictor):
    served = ServedModel.of(predictor, {"source": "bundle"})
    assert served.explainer is served.explainer and served.explainer.predictor is predictor
    assert (served.version, served.source["model_version"]) == (predictor.model_version,) * 2
    assert served.digest == predictor.bundle.model_digest
    holder = ModelHolder(Settings(), served)
    assert holder.current is served and predictor.observers is holder.observers


def test_requests_during_reloads_come_from_one_model(client, fixture_bundle, other_bundle):
    body = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"][
        "examples"][0]
    a_version, a_proba = _probabilities(client, body)
    _reload(client, other_bundle)
    b_version, b_proba = _probabilities(client, body)
    assert (a_version, b_version) == (fixture_bundle.model_version, other_bundle.model_version)
    assert a_proba != b_proba  # so a mixed answer would show
    expected = {a_version: a_proba, b_version: b_proba}

    seen: list[tuple[str, str, dict[str, float]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer(kind: str) -> None:
        while not stop.is_set():
            if kind == "batch":
                r = client.post("/v1/predict/batch", json=[body, body])
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                seen.extend((kind, r.json()["model_version"], p["probabilities"])
                            for p in r.json()["predictions"])
            elif kind == "explain":
                r = client.post("/v1/explain", json=body)
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                seen.append((kind, r.json()["model_version"],
                             r.json()["prediction"]["probabilities"]))
            else:
                r = client.post("/v1/predict", json=body)
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                seen.append((kind, r.json()["model_version"], r.json()["probabilities"]))

    threads = [threading.Thread(target=hammer, args=(k,))
               for k in ("predict", "predict", "batch", "explain")]
    for t in threads:
        t.start()
    try:
        for bundle in [fixture_bundle, other_bundle] * 3:  # six swaps under load
            # Some answers between two swaps, whatever the machine; and after the last one.
            _wait_for_answers(seen, 4, failures)
            _reload(client, bundle)
        _wait_for_answers(seen, 4, failures)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert {kind for kind, _, _ in seen} == {"predict", "batch", "explain"}
    assert {v for _, v, _ in seen} == {a_version, b_version}, "both models answered"
    for kind, version, proba in seen:
        assert proba == pytest.approx(expected[version], abs=1e-9), (kind, version)


def test_after_a_reload_every_consumer_reports_the_new_model(client, fixture_bundle,
                                                             other_bundle, fixture_dataset):
    app = client.app
    old, new = fixture_bundle.model_version, other_bundle.model_version
    body = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"][
        "examples"][0]
    assert _probabilities(client, body)[0] == old
    r = _reload(client, other_bundle)
    assert (r["previous_model_version"], r["model_version"], r["changed"]) == (old, new, True)
    assert r["source"]["bundle"] == str(other_bundle.path)

    assert _probabilities(client, body)[0] == new
    assert client.post("/v1/predict/batch", json=[body]).json()["model_version"] == new
    assert client.post("/v1/explain", json=body).json()["model_version"] == new
    assert client.get("/health").json()["model_version"] == new
    info = client.get("/v1/model").json()
    assert info["model_version"] == new and info["source"]["model_version"] == new
    assert info["source"]["bundle"] == str(other_bundle.path)

    table, images, _ = job_inputs(fixture_dataset, 20)
    r = client.post("/v1/jobs", headers=AUTH, files={"table": ("rows.csv", table, "text/csv"),
                                                     "images": ("i.zip", images, "application/zip")})
    assert r.status_code == 201, r.text
    job = wait_for(client.get, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert (job["model_version"], job["model_digest"]) == (new, other_bundle.model_digest)
    rows = pd.read_parquet(io.BytesIO(client.get(job["result_url"], headers=AUTH).content))
    assert set(rows["model_version"]) == {new}

    metrics = client.get("/metrics").text
    assert f'model_version="{new}"' in metrics and f'model_version="{old}"' in metrics
    app.state.prediction_log.flush()
    assert len(app.state.prediction_log.read(model_version=new)) > 0
    assert app.state.model_holder.current.version == new
    assert "predictor" not in app.state and "explainer" not in app.state

    # Reloading with no body re-resolves the server's own (pinned) choice: its first bundle.
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["model_version"] == old, r.text
