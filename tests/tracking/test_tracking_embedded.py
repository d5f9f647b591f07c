"""Tracking on the embedded store: sqlite + artifact folder under the data dir, nothing elsewhere.

Also: nested HPO trial runs, the registered pyfunc scoring through the Predictor, and the
API serving `models:/pokemon@champion` with its model card.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalfuse.config import Settings


@pytest.fixture(scope="module")
def embedded(fixture_dataset, fixture_splits, tmp_path_factory):
    from modalfuse.tracking.registry import log_and_register
    from modalfuse.training.train import TrainConfig, train

    d = tmp_path_factory.mktemp("embedded")
    bundle = train(fixture_dataset, fixture_splits, d / "bundle",
                   TrainConfig(num_boost_round=20, cv=False, seed=0))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(d)  # anything MLflow wrote "wherever it runs" would land here
        s = Settings(data_dir=d / "data")
        tracked = log_and_register(bundle, fixture_dataset, fixture_splits, s)
        yield {"settings": s, "bundle": bundle, "tracked": tracked, "dir": d}


def test_embedded_store_is_explicit_and_complete(embedded, fixture_dataset):
    from mlflow import MlflowClient

    from modalfuse.tracking.runs import tracking_uri

    s, tracked, d = embedded["settings"], embedded["tracked"], embedded["dir"]
    assert (s.mlflow_dir / "mlflow.db").is_file()
    assert not (d / "mlruns").exists() and not (d / "mlflow.db").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # restored after the run
    client = MlflowClient(tracking_uri(s), tracking_uri(s))
    run = client.get_run(tracked.run_id)
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(
        s.mlflow_dir / "artifacts")
    assert tracked.alias == "champion" and tracked.registered_version == "1"
    m = run.data.metrics
    assert m["test_accuracy"] == pytest.approx(embedded["bundle"].metrics["test"]["accuracy"])
    assert any(k.startswith("test_f1.") for k in m)
    files = {a.path for a in client.list_artifacts(tracked.run_id, "environment")}
    assert files == {"environment/environment.json", "environment/requirements.txt"}
    card = client.download_artifacts(tracked.run_id, "model_card/model_card.md", str(d))
    text = Path(card).read_text()
    for section in ("## Data", "### Per class (test)", "### Per generation (test)",
                    "## Split audit", "## Intended use", "## Limitations", fixture_dataset.version):
        assert section in text


def test_trial_runs_nest_under_their_parent(embedded):
    import mlflow

    from modalfuse.tracking.runs import TrackingError, get_client, training_run, trial_run

    s = embedded["settings"]
    with pytest.raises(TrackingError, match="active parent run"), trial_run({"lr": 0.1}):
        pass
    with training_run(s, "pokemon", run_name="tune") as parent:
        ids = []
        for lr in (0.05, 0.1):
            with trial_run({"train": {"learning_rate": lr}}) as trial:
                mlflow.log_metric("cv_macro_f1", lr)
                ids.append(trial.info.run_id)
    client = get_client(s)
    for rid, lr in zip(ids, (0.05, 0.1), strict=True):
        r = client.get_run(rid)
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.params["train.learning_rate"] == str(lr)


def test_registered_pyfunc_and_api_score_like_the_predictor(embedded, fixture_dataset,
                                                            fixture_splits):
    import mlflow
    from fastapi.testclient import TestClient

    from modalfuse.inference.predictor import Predictor, table_records
    from modalfuse.serve.app import create_app
    from modalfuse.tracking.registry import RegistryError, parse_model_uri, promote, rollback
    from modalfuse.tracking.runs import using_store

    s = embedded["settings"]
    ds = fixture_dataset
    rows = ds.table.set_index(ds.spec.id_column).loc[fixture_splits.ids("test")[:3]].reset_index()
    frame = pd.DataFrame(table_records(ds.spec, rows))
    frame["image_base64"] = [base64.b64encode(b).decode() for b in ds.row_images(rows)]
    frame.loc[2, "image_base64"] = "not base64!"
    with using_store(s):
        model = mlflow.pyfunc.load_model("models:/pokemon@champion")
    out = model.predict(frame)
    expected = Predictor(embedded["bundle"]).predict_proba(table_records(ds.spec, rows[:2]),
                                                           ds.row_images(rows[:2]))
    got = np.array([[json.loads(p)[lab] for lab in embedded["bundle"].labels]
                    for p in out["probabilities"][:2]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert out["error"][2] and not out["error"][0]

    app = create_app(Settings(data_dir=s.data_dir, model_uri="models:/pokemon@champion"))
    with TestClient(app) as client:
        assert client.get("/health").json()["model_version"] == embedded["bundle"].model_version
        card = client.get("/v1/model/card").text
        assert "registered model `pokemon` version 1" in card
        assert client.post("/admin/reload").status_code == 403  # no key configured: refused

    # With one version there is nothing to compare or roll back to; both say so.
    d = promote(s, "pokemon", ds, fixture_splits)
    assert not d.promoted and "no 'challenger'" in d.reason
    with pytest.raises(RegistryError, match="replaced no earlier champion"):
        rollback(s, "pokemon")
    with pytest.raises(RegistryError, match="is not models:/NAME@ALIAS"):
        parse_model_uri("pokemon@champion")
