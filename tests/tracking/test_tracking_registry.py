"""Tracking and registry against a real `mlflow server` (sqlite backend) on 127.0.0.1.

A `modalfuse train` run registers into the server, the API serves `models:/pokemon@champion`
from it, the promotion gate refuses a worse model and accepts a better one, and
`/admin/reload` swaps the served model while requests keep flowing, none failing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from modalfuse.config import Settings
from prod_helpers import stop_group, wait_healthy, wait_until

API_KEY = "k" * 24
# A deliberately weak model: two uninformative fields, no image, a handful of trees.
KEEP = {"height_m", "weight_kg"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weak_config(fields, rounds: int):
    from modalfuse.training.train import TrainConfig

    return TrainConfig(exclude_fields=[f.name for f in fields if f.name not in KEEP],
                       use_image_stats=False, num_boost_round=rounds, seed=0)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(d / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         "--artifacts-destination", str(d / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "proc": proc, "log": d / "server.log"}
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def registry(mlflow_server, fixture_dataset, fixture_splits, tmp_path_factory):
    """The server with MLFLOW_TRACKING_URI pointing at it, and bundles trained meanwhile."""
    from modalfuse.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("registry-bundles")
    # Train while the server boots: the good model and a second weak one.
    # Cross-validated: the promotion gate compares out-of-fold predictions.
    good = train(fixture_dataset, fixture_splits, out / "good",
                 TrainConfig(num_boost_round=40, seed=0))
    weak2 = train(fixture_dataset, fixture_splits, out / "weak2",
                  weak_config(fixture_dataset.spec.fields, 7))
    wait_healthy(mlflow_server["url"], mlflow_server["proc"], mlflow_server["log"], timeout=180)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])
        mp.setenv("MODALFUSE_DATA_DIR", str(out / "data"))  # serving cache, not the datasets
        yield {"url": mlflow_server["url"], "good": good, "weak2": weak2, "out": out}


class ThreadedAPI:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the API to start")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.mark.slow  # the module's `mlflow server`
def test_training_run_registers_into_server(registry, fixture_dataset):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from modalfuse.cli import app

    excl = [a for f in fixture_dataset.spec.fields if f.name not in KEEP
            for a in ("--exclude-field", f.name)]
    # The CLI reads the dataset from the session data dir; the server gets the run.
    env = {"MODALFUSE_DATA_DIR": str(fixture_dataset.root.parent.parent)}
    res = CliRunner().invoke(app, ["train", "--out", str(registry["out"] / "weak"), "--model",
                                   "gbm", "--rounds", "5", "--no-image-stats",
                                   "--seed", "0", *excl],
                             env=env)
    assert res.exit_code == 0, res.output
    assert "registered" in res.output and "champion" in res.output, res.output

    client = MlflowClient(registry["url"], registry["url"])
    champ = client.get_model_version_by_alias("pokemon", "champion")
    assert champ.version == "1"
    run = client.get_run(champ.run_id)
    assert run.data.params["train.num_boost_round"] == "5"
    assert run.data.params["dataset.version"] == fixture_dataset.version
    assert {"test_accuracy", "test_macro_f1", "test_ece"} <= set(run.data.metrics)
    assert run.data.tags["modalfuse.dataset_version"] == fixture_dataset.version
    assert run.data.tags["mlflow.source.git.commit"]
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert inputs["pokemon"].digest == fixture_dataset.version
    assert fixture_dataset.root.name in inputs["pokemon"].source
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_test.png", "evaluation/per_class_test.json"} <= names
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"environment", "data", "model_card"} <= top
    assert "## Split audit" in champ.description and "version 1" in champ.description


@pytest.mark.slow  # the module's `mlflow server`
def test_lean_serve_reads_the_registry_over_rest(registry, fixture_dataset, monkeypatch,
                                                tmp_path):
    """Without MLflow's client (the `serve` install) `models:/pokemon@champion` is resolved and
    downloaded over the server's REST API, into the same files MLflow's client gives."""
    from mlflow import MlflowClient

    from modalfuse.data.split import load_splits
    from modalfuse.inference.predictor import Predictor
    from modalfuse.tracking import registry as reg
    from modalfuse.tracking import source

    client = MlflowClient(registry["url"], registry["url"])
    if not client.search_model_versions("name='pokemon'"):  # run alone: register one first
        reg.log_and_register(registry["weak2"], fixture_dataset, load_splits(fixture_dataset),
                             Settings())
    champ = client.get_model_version_by_alias("pokemon", "champion")
    by_client, _ = reg.fetch_bundle("models:/pokemon@champion", Settings(data_dir=tmp_path / "a"))

    monkeypatch.setattr(reg, "mlflow_installed", lambda: False)
    monkeypatch.setattr(source, "mlflow_installed", lambda: False)
    lean = Settings(data_dir=tmp_path / "b")
    assert source.registered_champion(lean, "pokemon") == "models:/pokemon@champion"
    path, info = reg.fetch_bundle("models:/pokemon@champion", lean)
    assert (info["version"], info["run_id"], info["alias"]) == (champ.version, champ.run_id,
                                                                 "champion")
    files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(by_client) for p in by_client.rglob("*") if p.is_file())
    assert all((path / f).read_bytes() == (by_client / f).read_bytes() for f in files)
    assert Predictor.from_path(path).model_version == champ.tags["modalfuse.bundle_version"]
    numbered, _ = reg.fetch_bundle(f"models:/pokemon/{champ.version}", lean)
    assert numbered == path  # the same cached download

    with pytest.raises(reg.RegistryError, match="no version of 'pokemon' holds the alias 'nope'"):
        reg.fetch_bundle("models:/pokemon@nope", lean)
    with pytest.raises(reg.RegistryError, match="answered 404"):
        reg.fetch_bundle("models:/no-such-model/1", lean)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(reg.RegistryError, match="cannot reach the MLflow server"):
        reg.fetch_bundle("models:/pokemon@champion", lean)
    assert source.registered_champion(lean, "pokemon") is None  # unreachable: the bundle serves


@pytest.mark.slow  # the module's `mlflow server`
def test_promotion_gate_reload_and_rollback(registry, fixture_dataset, fixture_splits):
    from modalfuse.serve.app import create_app
    from modalfuse.tracking.registry import log_and_register, promote, rollback, trace

    s = Settings(model_uri="models:/pokemon@champion", api_key=API_KEY)
    app = create_app(s)
    with ThreadedAPI(app) as url:
        first = httpx.get(url + "/health").json()["model_version"]
        card = httpx.get(url + "/v1/model/card")
        assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
        assert "registered model `pokemon` version 1" in card.text
        assert "### Per generation (test)" in card.text

        # A better challenger passes the gate.
        good = log_and_register(registry["good"], fixture_dataset, fixture_splits, s)
        assert good.alias == "challenger"
        d = promote(s, "pokemon", fixture_dataset, fixture_splits, "macro_f1", 0.05)
        assert d.promoted, d.reason
        assert d.on == "cv" and d.interval["low"] >= 0.05, d.interval
        assert d.challenger.cv["macro_f1"] >= d.champion.cv["macro_f1"] + 0.05
        assert "test" in d.challenger.metrics or d.challenger.metrics  # the test split: a report
        assert Path(d.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Reload under load: every request answers 200, from the old model or the new one.
        body = json.loads((registry["good"].path / "bundle.json").read_text())["example"]
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/v1/predict", json=body)
                    results.append((r.status_code, r.json().get("model_version", r.text)))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(results) >= 3, 30, "answers before the reload")
        assert httpx.post(url + "/admin/reload").status_code == 401  # no key, no reload
        r = httpx.post(url + "/admin/reload", headers={"X-API-Key": API_KEY}, timeout=60)
        answered = len(results)
        wait_until(lambda: len(results) >= answered + 3, 30, "answers after the reload",
                   detail=lambda: results[-3:])
        stop.set()
        for t in threads:
            t.join(30)
        assert r.status_code == 200, r.text
        new = r.json()["model_version"]
        assert r.json()["changed"] and r.json()["previous_model_version"] == first
        assert new == registry["good"].model_version != first
        assert results and all(code == 200 for code, _ in results), results[:5]
        assert {v for _, v in results} <= {first, new}
        assert httpx.post(url + "/v1/predict", json=body).json()["model_version"] == new
        assert httpx.get(url + "/health").json()["model_version"] == new

        # A worse challenger is refused, and says why; the champion stays.
        log_and_register(registry["weak2"], fixture_dataset, fixture_splits, s)
        d = promote(s, "pokemon", fixture_dataset, fixture_splits, "macro_f1", 0.01)
        assert not d.promoted and "below the margin" in d.reason, d.reason
        from mlflow import MlflowClient

        client = MlflowClient(registry["url"], registry["url"])
        assert client.get_model_version_by_alias("pokemon", "champion").version == good.registered_version

        # Lineage of what the API serves: the run, the data version, the code.
        lineage = trace(s, new)
        assert lineage[0]["version"] == good.registered_version
        assert lineage[0]["dataset_version"] == fixture_dataset.version

        # Rollback moves champion back; a reload then serves it again.
        old, back = rollback(s, "pokemon")
        assert (old, back) == (good.registered_version, "1")
        r = httpx.post(url + "/admin/reload", headers={"X-API-Key": API_KEY}, timeout=60)
        assert r.json()["model_version"] == first
        bad = httpx.post(url + "/admin/reload", headers={"X-API-Key": API_KEY},
                         json={"model_uri": "models:/pokemon@nope"}, timeout=60)
        assert bad.status_code == 409 and f"still serving {first}" in bad.json()["detail"]


def test_a_folder_named_mlflow_is_not_mlflow(tmp_path, monkeypatch):
    """A data folder called `mlflow` under a working directory on sys.path (the serve image's
    /data/mlflow) is a namespace package, not MLflow's client: the lean install still reads
    the registry over REST."""
    import importlib.util

    from modalfuse.config import installed

    (tmp_path / "mlflow" / "serving").mkdir(parents=True)
    (tmp_path / "pyarrow").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.PathFinder
                        .find_spec(name, [str(tmp_path)]))
    assert not installed("mlflow") and not installed("pyarrow")
    monkeypatch.undo()
    assert installed("mlflow") and installed("json") and not installed("no_such_module_here")
