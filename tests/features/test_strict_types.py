"""Strict types: JSON is taken as typed, CSV by one documented text rule, NaN is NaN, and
line-wrapped (RFC 2045) base64 is accepted wherever an image comes as base64."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.data.builders.pokemon import pokemon_spec
from modalfuse.features.image import ImageError, decode_base64_image
from modalfuse.features.tabular import RecordError, parse_record
from modalfuse.inference.batch import predict_file
from modalfuse.serve.app import create_app

SPEC = pokemon_spec()


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("strict"), log_predictions=False)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def example(client):
    return client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"][
        "examples"][0]


def field_error(spec, field: str, value, from_text: bool = False) -> str | None:
    try:
        parse_record(spec, {field: value}, from_text=from_text)
    except RecordError as e:
        return e.errors.get(field)
    return None


@pytest.mark.parametrize("field, value, message", [
    ("hp", "39", "must be a number, got a string '39'"),
    ("hp", "", "must be a number, got a string ''"),
    ("hp", float("nan"), "must be a finite number, got NaN"),
    ("hp", float("-inf"), "must be a finite number, got -Infinity"),
    ("hp", True, "must be a number, got boolean true"),
    ("is_legendary", "yes", "must be true or false, got a string 'yes'"),
    ("is_legendary", "true", "must be true or false, got a string 'true'"),
    ("is_legendary", 1, "must be true or false, got the number 1"),
    ("color", 7, "must be a string, got int 7"),
])
def test_json_values_are_taken_as_typed(field, value, message):
    assert field_error(SPEC, field, value) == message


def test_typed_values_pass_including_numpy_scalars():
    assert field_error(SPEC, "hp", 39) is None and field_error(SPEC, "hp", np.int64(39)) is None
    assert field_error(SPEC, "is_legendary", np.bool_(True)) is None


@pytest.mark.parametrize("field, value, parsed", [
    ("hp", "39", 39.0), ("hp", " +4.5e1 ", 45.0), ("hp", "1.5", 1.5), ("hp", 39, 39.0),
    ("is_legendary", "TRUE", True), ("is_legendary", "false", False),
    ("is_legendary", "1", True), ("is_legendary", "0", False), ("is_legendary", 1, True),
    ("is_legendary", 0.0, False), ("is_legendary", float("nan"), None),
    ("is_legendary", " ", None),
])
def test_text_rule_converts_csv_cells(field, value, parsed):
    spec = SPEC.model_copy(update={"fields": [f.model_copy(update={"required": False})
                                              for f in SPEC.fields]})
    assert parse_record(spec, {field: value}, from_text=True)[field] == parsed


@pytest.mark.parametrize("field, value, message", [
    ("hp", "abc", "must be a number, got 'abc'"),
    ("hp", "1,000", "must be a number, got '1,000'"),
    ("hp", "1_000", "must be a number, got '1_000'"),
    ("hp", "inf", "must be a number, got 'inf'"),
    ("hp", float("nan"), "is required"),  # an empty CSV cell
    ("is_legendary", "yes", "must be true or false (in text: true, false, 1 or 0), got 'yes'"),
    ("is_legendary", 2, "must be true or false (in text: true, false, 1 or 0), got 2"),
])
def test_text_rule_refuses_what_it_does_not_define(field, value, message):
    assert field_error(SPEC, field, value, from_text=True) == message


def test_long_values_make_short_messages():
    message = field_error(SPEC, "hp", [1] * 100_000)
    assert message is not None and len(message) < 100


@pytest.mark.parametrize("change", [{"hp": "39"}, {"is_legendary": "yes"},
                                    {"is_legendary": 1}, {"color": 3}])
def test_api_refuses_coercion(client, example, change):
    r = client.post("/v1/predict", json={**example, "fields": {**example["fields"], **change}})
    assert r.status_code == 422, r.text
    assert [d["loc"][-1] for d in r.json()["detail"]] == list(change)


def test_api_accepts_integers_for_numbers(client, example):
    fields = {**example["fields"], "hp": int(example["fields"]["hp"])}
    assert client.post("/v1/predict", json={**example, "fields": fields}).status_code == 200


def test_batch_rows_are_strict_and_nan_is_reported_as_nan(client, example):
    rows = [{**example, "fields": {**example["fields"], "hp": "39"}},
            {**example, "fields": {**example["fields"], "is_legendary": "yes"}},
            {**example, "fields": {**example["fields"], "hp": "__NAN__"}}, example]
    body = json.dumps(rows).replace('"__NAN__"', "NaN")
    r = client.post("/v1/predict/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0]["error"] == {"hp": "must be a number, got a string '39'"}
    assert preds[1]["error"] == {"is_legendary": "must be true or false, got a string 'yes'"}
    assert preds[2]["error"] == {"hp": "must be a finite number, got NaN"}
    assert preds[3]["label"]


def wrapped(data: bytes, newline: str) -> str:
    """base64 as MIME writes it: 76-column lines (RFC 2045)."""
    text = base64.b64encode(data).decode()
    return newline.join(text[i:i + 76] for i in range(0, len(text), 76)) + newline


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_line_wrapped_base64_is_accepted(client, example, newline):
    png = base64.b64decode(example["image_base64"])
    body = {**example, "image_base64": wrapped(png, newline)}
    assert "\n" in body["image_base64"] and len(body["image_base64"].split(newline)[0]) == 76
    one = client.post("/v1/predict", json=body)
    assert one.status_code == 200, one.text
    assert one.json()["probabilities"] == client.post("/v1/predict", json=example).json()[
        "probabilities"]
    batch = client.post("/v1/predict/batch", json=[body])
    assert batch.status_code == 200 and batch.json()["errors"] == 0, batch.text
    assert client.post("/v1/explain", json=body).status_code == 200


@pytest.mark.parametrize("text", ["not base64!", "QUJD\x00", "QUJDRA", "Q\u00e9JD"])
def test_invalid_base64_is_still_refused(text):
    with pytest.raises(ImageError, match="not valid base64"):
        decode_base64_image(text)


def test_csv_batch_uses_the_text_rule(predictor, fixture_dataset, tmp_path):
    """A CSV column that pandas cannot type (one bad cell) stays text; its other cells are
    still numbers by the text rule, and booleans read true/false/1/0 only."""
    rows = fixture_dataset.table.head(5).drop(columns=[fixture_dataset.spec.target])
    rows = rows.astype({"hp": object, "is_legendary": object}).reset_index(drop=True)
    rows.loc[1, "hp"] = "abc"
    rows.loc[2, "is_legendary"] = "yes"
    rows.loc[3, "is_legendary"] = "1"
    src = tmp_path / "rows.csv"
    rows.to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    predict_file(predictor, src, fixture_dataset.image_dir, out)
    got = pd.read_parquet(out)
    errors = [json.loads(e) if e else None for e in got["error"]]
    assert errors[1] == {"hp": "must be a number, got 'abc'"}
    assert errors[2] == {"is_legendary": "must be true or false (in text: true, false, 1 or 0), "
                                         "got 'yes'"}
    assert errors[0] is None and errors[3] is None and errors[4] is None
