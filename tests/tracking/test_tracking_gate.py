"""The promotion gate chooses without the test split, and serving follows the registry.

On the embedded MLflow store: a champion and a challenger cross-validated on the same
folds are compared on their out-of-fold predictions (a paired bootstrap); a challenger
that is better on test but not on the folds is refused; other folds are refused unless
`--on test`, which is recorded. A plain `serve`, `predict` and `/v1/model` use
`models:/pokemon@champion`, never the latest (unpromoted) bundle.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modalfuse.config import Settings
from prod_helpers import wait_until

# A deliberately weak model: two uninformative fields, no image, a handful of trees.
KEEP = {"height_m", "weight_kg"}


def weak_config(fields):
    from modalfuse.training.train import TrainConfig

    return TrainConfig(exclude_fields=[f.name for f in fields if f.name not in KEEP],
                       use_image_stats=False, num_boost_round=5, seed=0)


@pytest.fixture(scope="module")
def store(fixture_dataset, fixture_splits, tmp_path_factory):
    """A data folder of its own (the fixture dataset linked in) with an embedded registry whose
    champion (version 1) is the weak model."""
    from modalfuse.tracking.registry import log_and_register
    from modalfuse.training.train import train

    d = tmp_path_factory.mktemp("gate")
    data = d / "data"
    (data / "datasets").mkdir(parents=True)
    (data / "datasets" / "pokemon").symlink_to(fixture_dataset.root)
    weak = train(fixture_dataset, fixture_splits, d / "weak", weak_config(fixture_dataset.spec.fields))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MODALFUSE_BUNDLE", raising=False)
        mp.delenv("MODALFUSE_MODEL_URI", raising=False)
        mp.setenv("MODALFUSE_DATA_DIR", str(data))
        s = Settings()
        champion = log_and_register(weak, fixture_dataset, fixture_splits, s)
        assert champion.alias == "champion"
        yield {"settings": s, "dir": d, "weak": weak, "data": data}


def _client(s: Settings):
    from mlflow import MlflowClient

    from modalfuse.tracking.runs import tracking_uri

    return MlflowClient(tracking_uri(s), tracking_uri(s))


def test_bundle_carries_out_of_fold_predictions(store, fixture_splits):
    from modalfuse.inference.oof import OutOfFold, folds_digest

    weak = store["weak"]
    oof = OutOfFold.load(weak.path, weak.labels)
    assert oof is not None
    train_ids = set(fixture_splits.ids("train").tolist())
    assert set(oof.ids.tolist()) <= train_ids and len(oof.ids) > 0.9 * len(train_ids)
    assert not set(oof.ids.tolist()) & set(fixture_splits.ids("test").tolist())
    assert np.allclose(oof.proba.sum(axis=1), 1.0, atol=1e-6)
    assert weak.meta["cv_oof"]["folds_digest"] == folds_digest(fixture_splits.table)
    # Every row's fold is its fold in the frozen splits.
    fold = fixture_splits.table.set_index("id")["fold"]
    assert (fold.loc[oof.ids].to_numpy() == oof.folds).all()


def test_better_on_test_but_not_on_folds_is_refused(store, fixture_dataset, fixture_splits):
    from modalfuse.tracking.registry import (
        CHALLENGER,
        CHAMPION,
        TAG_GATE,
        alias_version,
        log_and_register,
        promote,
    )
    from modalfuse.training.train import TrainConfig, train

    s, d = store["settings"], store["dir"]
    good = train(fixture_dataset, fixture_splits, d / "good", TrainConfig(num_boost_round=40, seed=0))
    assert good.metrics["test"]["macro_f1"] > store["weak"].metrics["test"]["macro_f1"] + 0.05
    # Its out-of-fold predictions are the champion's: on the folds it gains nothing.
    shutil.copy(store["weak"].path / "evaluation" / "oof.parquet",
                good.path / "evaluation" / "oof.parquet")
    tracked = log_and_register(good, fixture_dataset, fixture_splits, s)
    assert tracked.alias == CHALLENGER

    d_cv = promote(s, "pokemon", fixture_dataset, fixture_splits, "macro_f1", 0.01)
    assert not d_cv.promoted and d_cv.on == "cv", d_cv.reason
    assert d_cv.interval["gain"] == pytest.approx(0.0) and d_cv.interval["low"] < 0.01
    assert "90% paired-bootstrap interval" in d_cv.reason and "below the margin" in d_cv.reason
    # The test split was scored, as a report, and says the challenger is better there.
    assert d_cv.challenger.metrics["macro_f1"] > d_cv.champion.metrics["macro_f1"] + 0.05
    client = _client(s)
    assert str(alias_version(client, "pokemon", CHAMPION).version) == "1"
    tag = client.get_model_version("pokemon", tracked.registered_version).tags[TAG_GATE]
    assert tag.startswith("cv:")

    # The CLI prints the interval and exits 1 on a refusal.
    res = CliRunner().invoke(_app(), ["promote", "--margin", "0.01", "--resamples", "500"])
    assert res.exit_code == 1, res.output
    out = " ".join(res.output.split())
    assert "90% interval" in out and "refused" in out and "test (report only)" in out

    # --on test is allowed, and recorded on the version.
    d_test = promote(s, "pokemon", fixture_dataset, fixture_splits, "macro_f1", 0.01, on="test")
    assert d_test.promoted and d_test.on == "test", d_test.reason
    assert "--on test" in d_test.reason
    assert str(alias_version(client, "pokemon", CHAMPION).version) == tracked.registered_version
    tags = client.get_model_version("pokemon", tracked.registered_version).tags
    assert tags[TAG_GATE].startswith("test:")
    assert "promoted" in tags["modalfuse.promotion"]


@pytest.mark.slow  # starts `modalfuse serve`
def test_other_folds_are_refused_and_the_served_model_follows_the_champion(
        store, fixture_dataset, fixture_splits):
    from modalfuse.data.split import make_splits
    from modalfuse.tracking.registry import CHAMPION, alias_version, log_and_register, promote
    from modalfuse.training.train import TrainConfig, train

    s, d = store["settings"], store["dir"]
    client = _client(s)
    champion = alias_version(client, "pokemon", CHAMPION)
    champion_version = str(champion.version)
    other = make_splits(fixture_dataset, seed=7)
    # Trained into the dataset's latest folder, the way `modalfuse train` does it.
    latest = s.default_bundle("pokemon")
    bundle = train(fixture_dataset, other, latest, TrainConfig(num_boost_round=30, seed=1))
    tracked = log_and_register(bundle, fixture_dataset, other, s)
    decision = promote(s, "pokemon", fixture_dataset, fixture_splits, "macro_f1", 0.0)
    assert not decision.promoted
    assert "different folds" in decision.reason and "--on test" in decision.reason
    assert str(alias_version(client, "pokemon", CHAMPION).version) == champion_version
    served = client.get_model_version("pokemon", champion_version).tags["modalfuse.bundle_version"]
    assert served != bundle.model_version != tracked.registered_version

    # Serving follows the registry: the champion, not the latest bundle training wrote.
    from modalfuse.tracking.source import choose_model

    choice = choose_model(Settings(), "pokemon")
    assert choice.uri == "models:/pokemon@champion" and "registry" in choice.chosen_by
    assert choose_model(Settings(), "pokemon", bundle=latest).bundle == latest  # --bundle wins

    port = _free_port()
    env = {**os.environ, "MODALFUSE_DATA_DIR": str(store["data"]), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "modalfuse.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url, proc)
        info = httpx.get(url + "/v1/model", timeout=10).json()
        src = info["source"]
        assert info["model_version"] == served
        assert src["source"] == "registry" and src["alias"] == CHAMPION
        assert src["version"] == champion_version and src["uri"] == "models:/pokemon@champion"
        assert Path(src["bundle"]).is_dir() and Path(src["bundle"]) != latest
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"serving model {served} from models:/pokemon@champion" in out, out
    assert f"version {champion_version}" in out

    # `predict` without --bundle scores with the champion too.
    rows = d / "rows.csv"
    fixture_dataset.table.drop(columns=[fixture_dataset.spec.target]).head(5).to_csv(rows, index=False)
    res = CliRunner().invoke(_app(), ["predict", "-i", str(rows), "-o", str(d / "p.parquet"),
                                      "--images", str(fixture_dataset.image_dir)])
    assert res.exit_code == 0, res.output
    assert set(pd.read_parquet(d / "p.parquet")["model_version"]) == {served}


def test_without_a_registry_the_latest_bundle_is_served(tmp_path, monkeypatch):
    from modalfuse.tracking.source import choose_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = Settings(data_dir=tmp_path)
    choice = choose_model(s, "pokemon")
    assert choice.bundle == s.default_bundle("pokemon") and "no champion" in choice.chosen_by
    assert not (tmp_path / "mlflow").exists()  # asking created nothing


def _app():
    from modalfuse.cli import app

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `modalfuse serve` answers /health; fail with its output if it exits first."""
    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("serve exited:\n" + (proc.stdout.read() if proc.stdout else ""))
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout, "`modalfuse serve` to answer /health", interval=0.3)


def test_a_fallback_server_finds_the_champion_on_reload(fixture_dataset, fixture_splits,
                                                         fixture_bundle, tmp_path, monkeypatch):
    """Started before any champion existed (the latest bundle), a reload with no body chooses
    again and serves the registry's champion."""
    from fastapi.testclient import TestClient

    from modalfuse.serve.app import create_app
    from modalfuse.tracking.registry import log_and_register
    from modalfuse.tracking.source import choose_model, load_choice, pinned_settings
    from prod_helpers import API_KEY

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = Settings(data_dir=tmp_path, api_key=API_KEY, log_predictions=False)
    shutil.copytree(fixture_bundle.path, s.default_bundle("pokemon"))
    choice = choose_model(s, "pokemon")
    assert choice.fallback
    predictor, source = load_choice(s, choice)
    app = create_app(pinned_settings(s, choice), predictor, source)
    with TestClient(app) as client:
        assert client.get("/v1/model").json()["source"]["source"] == "bundle"
        tracked = log_and_register(fixture_bundle, fixture_dataset, fixture_splits, s)
        assert tracked.alias == "champion"
        r = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200, r.text
        src = client.get("/v1/model").json()["source"]
        assert src["source"] == "registry" and src["alias"] == "champion", src
        assert src["version"] == tracked.registered_version
