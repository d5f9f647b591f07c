"""The HTTP API of issue [skeleton]: contracts, examples, and clear 4xx for bad input."""

from __future__ import annotations

import base64
import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.serve.app import create_app


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(Settings(max_batch_rows=8), predictor=predictor))


@pytest.fixture(scope="module")
def example(client):
    schema = client.get("/openapi.json").json()
    return schema["components"]["schemas"]["PredictRequest"]["examples"][0]


def test_openapi_example_is_a_valid_request(client, example, predictor):
    r = client.post("/v1/predict", json=example)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == predictor.model_version
    assert body["label"] in predictor.labels
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
    assert [t["label"] for t in body["top"]][0] == body["label"]


def test_health_and_model_info(client, predictor):
    assert client.get("/health").json() == {"status": "ok", "model_version": predictor.model_version}
    info = client.get("/v1/model").json()
    assert info["labels"] == predictor.labels
    assert {f["name"] for f in info["input_schema"]} == {f.name for f in predictor.spec.fields}
    assert {"accuracy", "macro_f1"} <= set(info["metrics"]["test"])
    assert info["dataset"]["version"]


@pytest.mark.parametrize("change, field", [
    ({"hp": 999}, "hp"),
    ({"hp": "lots"}, "hp"),
    ({"color": "Turquoise"}, "color"),
    ({"egg_groups": ["Dinosaur"]}, "egg_groups"),
    ({"shoe_size": 3}, "shoe_size"),
])
def test_invalid_fields_get_422_naming_the_field(client, example, change, field):
    body = {**example, "fields": {**example["fields"], **change}}
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422
    assert any(field in map(str, d["loc"]) for d in r.json()["detail"]), r.json()


def test_missing_required_field_is_named(client, example):
    fields = dict(example["fields"])
    del fields["atk"]
    r = client.post("/v1/predict", json={**example, "fields": fields})
    assert r.status_code == 422 and "atk" in r.text


@pytest.mark.parametrize("image, message", [
    (base64.b64encode(b"GIF89a-truncated").decode(), "image"),
    ("%%%not-base64%%%", "base64"),
    ("", "empty"),
])
def test_unreadable_images_get_4xx_with_a_message(client, example, image, message):
    r = client.post("/v1/predict", json={**example, "image_base64": image})
    assert 400 <= r.status_code < 500
    assert message in r.text


def test_multipart_upload(client, example, predictor):
    png = base64.b64decode(example["image_base64"])
    r = client.post("/v1/predict/upload", files={"image": ("s.png", png, "image/png")},
                    data={"fields": json.dumps(example["fields"])})
    assert r.status_code == 200 and r.json()["model_version"] == predictor.model_version
    assert r.json()["probabilities"] == client.post("/v1/predict", json=example).json()["probabilities"]
    bad = client.post("/v1/predict/upload", files={"image": ("s.png", b"zz", "image/png")},
                      data={"fields": "{not json"})
    assert bad.status_code == 422 and "fields" in bad.text


def test_batch_keeps_good_rows_and_reports_bad_ones(client, example):
    bad_field = {**example, "fields": {**example["fields"], "hp": -1}}
    bad_image = {**example, "image_base64": base64.b64encode(b"nope").decode()}
    r = client.post("/v1/predict/batch", json=[example, bad_field, bad_image, example])
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert r.json()["errors"] == 2 and len(preds) == 4
    assert preds[0]["label"] and preds[3]["label"]
    assert "hp" in preds[1]["error"] and "image" in preds[2]["error"]


def test_batch_limits(client, example):
    assert client.post("/v1/predict/batch", json=[]).status_code == 422
    r = client.post("/v1/predict/batch", json=[example] * 9)
    assert r.status_code == 413 and "limit is 8" in r.text


def test_cli_batch_one_row_per_input_with_error_column(predictor, fixture_dataset, tmp_path):
    rows = fixture_dataset.table.head(6).copy()
    rows.loc[1, "hp"] = 999
    rows.loc[2, "image"] = "missing.png"
    rows.loc[3, "image"] = "../../etc/passwd"
    src = tmp_path / "rows.parquet"
    rows.to_parquet(src)
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(cli_app, ["predict", "-i", str(src), "-o", str(out), "--images",
                                       str(fixture_dataset.image_dir), "--bundle",
                                       str(predictor.bundle.path), "--chunk-size", "4"])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    assert len(got) == len(rows) and got["row"].tolist() == list(range(len(rows)))
    assert got["id"].tolist() == rows["id"].tolist()
    assert got["error"].notna().tolist() == [False, True, True, True, False, False]
    assert "hp" in got.loc[1, "error"] and "not found" in got.loc[2, "error"]
    assert "leaves the images folder" in got.loc[3, "error"]
    assert got.loc[0, "predicted"] in predictor.labels


def test_cli_batch_refuses_unusable_input(predictor, tmp_path):
    src = tmp_path / "rows.csv"
    pd.DataFrame({"hp": [1]}).to_csv(src, index=False)
    res = CliRunner().invoke(cli_app, ["predict", "-i", str(src), "-o", str(tmp_path / "o.csv"),
                                       "--images", str(tmp_path), "--bundle",
                                       str(predictor.bundle.path)])
    assert res.exit_code == 1 and "no image column" in res.output
