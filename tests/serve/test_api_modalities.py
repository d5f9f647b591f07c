"""Missing modalities, prediction sets and OOD flags through the API, batch scoring, the
metrics and the prediction log (issue [multimodal])."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modalfuse.config import Settings
from modalfuse.inference.batch import score_frame
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.inference.reliability import reliability_report
from modalfuse.serve.app import create_app


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(Settings(max_batch_rows=8), predictor=predictor))


@pytest.fixture(scope="module")
def example(client):
    schema = client.get("/openapi.json").json()
    return schema["components"]["schemas"]["PredictRequest"]["examples"][0]


def noise_png(seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bundle_carries_models_for_each_case(predictor):
    assert predictor.modalities == {"both": True, "fields": True, "image": True}
    comp = predictor.bundle.meta["companions"]
    assert comp["models"]["fields"]["recipe"] == "gbm_tabular"
    assert comp["models"]["image"]["recipe"] == "gbm_image"
    assert set(comp["conformal"]) == {"both", "fields", "image"}


def test_fields_only_is_scored_by_the_fields_model(client, example, predictor):
    r = client.post("/v1/predict", json={"fields": example["fields"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["modalities"] == {"used": ["fields"], "missing": ["image"]}
    assert body["ood"]["image"] is None and body["ood"]["fields"] is not None
    # The fields-only model answers, not the main model with a made-up image.
    prep = predictor.prepare([example["fields"]], [None])
    want = predictor.model_for("fields").predict_proba(prep.batch)[0]
    got = np.array([body["probabilities"][lab] for lab in predictor.labels])
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.isnan(prep.batch.image_stats).all()


def test_image_only_and_both(client, example):
    r = client.post("/v1/predict", json={"image_base64": example["image_base64"]})
    assert r.status_code == 200, r.text
    assert r.json()["modalities"] == {"used": ["image"], "missing": ["fields"]}
    assert r.json()["ood"]["fields"] is None
    full = client.post("/v1/predict", json=example).json()
    assert full["modalities"] == {"used": ["fields", "image"], "missing": []}
    assert full["prediction_set"]["labels"][0] == full["label"]
    assert full["prediction_set"]["coverage"] == 0.9
    assert full["ood"]["image"]["flag"] is False


def test_neither_modality_is_a_422_that_says_what_to_send(client):
    r = client.post("/v1/predict", json={})
    assert r.status_code == 422
    assert "send an image, the fields, or both" in r.text


def test_coverage_per_request(client, example):
    sizes = []
    for cov in (0.5, 0.9, 0.99):
        r = client.post(f"/v1/predict?coverage={cov}", json=example)
        assert r.status_code == 200, r.text
        assert r.json()["prediction_set"]["coverage"] == cov
        sizes.append(len(r.json()["prediction_set"]["labels"]))
    assert sizes == sorted(sizes)
    for bad in ("0.2", "1", "x"):
        r = client.post(f"/v1/predict?coverage={bad}", json=example)
        assert r.status_code == 422 and "coverage" in r.text


def test_noise_image_is_flagged_and_counted(client, example):
    r = client.post("/v1/predict", json={**example, "image_base64": noise_png()})
    assert r.status_code == 200, r.text
    ood = r.json()["ood"]
    assert ood["flag"] and ood["image"]["flag"] and ood["image"]["score"] > ood["image"]["threshold"]
    metrics = client.get("/metrics").text
    assert 'modalfuse_ood_flags_total{input="image"' in metrics
    assert 'modalfuse_predictions_by_modalities_total{model_version=' in metrics or \
        'modalfuse_predictions_by_modalities_total{modalities="both"' in metrics


def test_out_of_range_field_is_flagged_with_its_reason(client, example, predictor):
    hp = predictor.bundle.companions.field_ood.ranges["hp"][1] + 50
    r = client.post("/v1/predict", json={**example, "fields": {**example["fields"], "hp": hp}})
    if r.status_code == 422:  # the spec's own bound refuses it first: that is a 4xx, fine
        pytest.skip("hp above the training range is outside the spec's bounds")
    fields = r.json()["ood"]["fields"]
    assert fields["flag"] and "outside the training range" in fields["reasons"]["hp"]


def test_batch_mixes_cases_and_bad_rows(client, example):
    rows = [example, {"fields": example["fields"]}, {"image_base64": example["image_base64"]},
            {"fields": example["fields"], "image_base64": "not base64!"}, {}]
    r = client.post("/v1/predict/batch?coverage=0.8", json=rows)
    assert r.status_code == 200, r.text
    items = r.json()["predictions"]
    assert [it["modalities"]["used"] if it["modalities"] else None for it in items] == [
        ["fields", "image"], ["fields"], ["image"], None, None]
    assert items[3]["error"] == {"image_base64": "not valid base64"}
    assert items[3]["prediction_id"] is None and items[4]["error"]
    assert all(it["prediction_set"]["coverage"] == 0.8 for it in items[:3])
    assert r.json()["errors"] == 2


def test_upload_without_image(client, example):
    r = client.post("/v1/predict/upload", data={"fields": json.dumps(example["fields"])})
    assert r.status_code == 200, r.text
    assert r.json()["modalities"]["missing"] == ["image"]


def test_batch_file_with_empty_image_cell_and_missing_file(predictor, fixture_dataset):
    rows = fixture_dataset.table.head(3).copy()
    rows.loc[1, "image"] = None
    rows.loc[2, "image"] = "missing.png"
    out = score_frame(predictor, rows, fixture_dataset.image_dir)
    assert out["modalities"].tolist()[:2] == ["fields+image", "fields"]
    assert out["error"].notna().tolist() == [False, False, True]
    assert "not found" in out["error"][2]
    assert out["prediction_set"].notna().tolist() == [True, True, False]


def test_prediction_log_records_flags(tmp_path, predictor, example):
    from modalfuse.monitor.predlog import PredictionLog

    plog = PredictionLog(tmp_path / "p.db").open()
    local = Predictor(predictor.bundle)
    local.observers.append(plog.observe)
    image = base64.b64decode(example["image_base64"])
    local.predict([example["fields"], example["fields"], {}],
                  [image, None, base64.b64decode(noise_png(1))])
    plog.flush()
    summary = plog.read().input_flags()
    plog.stop()
    assert summary["rows"] == 3
    assert summary["modalities"] == {"both": 1, "fields": 1, "image": 1}
    assert summary["ood_image_share"] == pytest.approx(1 / 3)


def test_reliability_report_on_the_fixture(predictor, fixture_dataset, fixture_splits, tmp_path):
    from modalfuse.inference.reliability import plot_reliability

    rep = reliability_report(predictor, fixture_dataset, fixture_splits.ids("test"),
                             probes_per_family=8)
    assert set(rep["cases"]) == {"both", "fields", "image"}
    assert 0 <= rep["conformal"]["both"]["0.9"]["coverage"] <= 1
    assert rep["ood"]["families"]["random noise"]["flag_rate"] == 1.0
    records = table_records(fixture_dataset.spec, fixture_dataset.table.head(2))
    assert len(predictor.predict(records, [None, None])) == 2
    assert isinstance(pd.DataFrame(rep["ood"]["families"]).T, pd.DataFrame)
    curve = rep["conformal"]["both"]["curve"]
    assert [p["target"] for p in curve] == sorted(p["target"] for p in curve)
    assert plot_reliability(rep, tmp_path / "r.png").stat().st_size > 1000


def test_a_bundle_without_companions_requires_both_and_says_so(predictor, tmp_path, example):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(predictor.bundle.path, old)
    meta = json.loads((old / "bundle.json").read_text())
    meta.pop("companions")  # what a bundle written before [multimodal] looks like
    (old / "bundle.json").write_text(json.dumps(meta))
    legacy = Predictor.from_path(old)
    assert legacy.modalities == {"both": True, "fields": False, "image": False}
    client = TestClient(create_app(Settings(), predictor=legacy))
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    assert set(schema["required"]) == {"fields", "image_base64"}
    r = client.post("/v1/predict", json={"fields": example["fields"]})
    assert r.status_code == 422
    body = client.post("/v1/predict", json=example).json()
    assert body["prediction_set"] is None and body["ood"]["image"] is None
    assert client.get("/v1/model").json()["modalities"]["fields"] is False
    assert client.get("/v1/model").json()["trust"] == {}
    # The bundle that has them says so on /v1/model.
    info = TestClient(create_app(Settings(), predictor=predictor)).get("/v1/model").json()
    assert info["modalities"] == {"both": True, "fields": True, "image": True}
    assert info["trust"]["conformal"]["both"]["method"] in ("aps", "raps")


def test_no_fields_means_no_value_of_any_field_and_no_unknown_key(client, example):
    image = example["image_base64"]
    rows = [{"fields": {"bogus": None}, "image_base64": image},  # an unknown key is not "no fields"
            {"fields": {}, "image_base64": image}]
    items = client.post("/v1/predict/batch", json=rows).json()["predictions"]
    assert "bogus" in items[0]["error"] and items[1]["modalities"]["used"] == ["image"]
    # Neither input: one message, no list of required fields after it.
    detail = client.post("/v1/predict", json={}).json()["detail"]
    assert len(detail) == 1 and "send an image, the fields, or both" in detail[0]["msg"]


def test_upload_errors_sit_where_they_came_from(client, example):
    r = client.post("/v1/predict/upload", data={})
    assert r.status_code == 422
    assert [d["loc"] for d in r.json()["detail"]] == [["body", "image"]]
    huge = json.dumps({**example["fields"], "hp": 0}).replace('"hp": 0', '"hp": 1' + "0" * 5000)
    r = client.post("/v1/predict/upload", data={"fields": huge})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "fields"]
    r = client.post("/v1/predict/upload", data={"fields": json.dumps({"hp": 50})})
    locs = [d["loc"] for d in r.json()["detail"]]
    assert r.status_code == 422 and ["body", "fields", "atk"] in locs, locs


def test_pandas_missing_values_mean_no_image(predictor, fixture_dataset):
    from modalfuse.inference.mlflow_pyfunc import BundlePyfunc

    rows = fixture_dataset.table.head(2).copy()
    frame = pd.DataFrame(table_records(fixture_dataset.spec, rows))
    b64 = base64.b64encode(fixture_dataset.row_images(rows)[0]).decode()
    frame["image_base64"] = pd.array([b64, pd.NA], dtype="string")
    model = BundlePyfunc()
    model.predictor = predictor
    out = model.predict(None, frame)
    assert (out["error"] == "").all() and out["label"].notna().all()
    rows["image"] = pd.array([rows["image"].iloc[0], pd.NA], dtype="string")
    scored = score_frame(predictor, rows, fixture_dataset.image_dir)
    assert scored["modalities"].tolist() == ["fields+image", "fields"]


def test_drift_compares_only_rows_with_both_modalities(tmp_path, predictor, example):
    from modalfuse.monitor.predlog import PredictionLog

    plog = PredictionLog(tmp_path / "p.db").open()
    local = Predictor(predictor.bundle)
    local.observers.append(plog.observe)
    image = base64.b64decode(example["image_base64"])
    local.predict([example["fields"]] * 2, [image, None])
    plog.flush()
    logged = plog.read()
    plog.stop()
    assert len(logged.of_case("both")) == 1 and len(logged.of_case("fields")) == 1
    assert not np.isnan(logged.of_case("both").features()).any()
