"""The UI's functions (without a browser): one explained prediction, batch upload, model tab."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from modalfuse.config import Settings
from modalfuse.inference.predictor import table_records
from modalfuse.inference.uploads import UploadLimits, safe_extract_zip
from modalfuse.ui.app import (
    UploadError,
    explain_one,
    input_values,
    model_card_markdown,
    model_markdown,
    prefill,
    record_from_inputs,
    score_upload,
)


@pytest.fixture(scope="module")
def app(predictor):
    from modalfuse.serve.app import create_app

    return create_app(Settings(), predictor=predictor)


@pytest.fixture(scope="module")
def sample(fixture_dataset, fixture_splits):
    ds = fixture_dataset
    test = ds.table.set_index(ds.spec.id_column).loc[fixture_splits.ids("test")].reset_index()
    return test.head(5)


def test_the_ui_is_mounted_on_the_api(app, predictor):
    from fastapi.testclient import TestClient

    client = TestClient(app)
    r = client.get("/ui/")
    assert r.status_code == 200 and "gradio" in r.text.lower()
    assert client.get("/health").json()["model_version"] == predictor.model_version


def test_one_prediction_is_explained_like_the_api(app, predictor, fixture_dataset, sample):
    from modalfuse.serve.routes.explain import explainer_for

    spec = predictor.spec
    rec = table_records(spec, sample)[0]
    values = input_values(spec, rec)
    assert record_from_inputs(spec, values)["color"] == rec["color"]
    image = fixture_dataset.image_bytes(sample[spec.image_column].iloc[0])
    status, top, heat, share, table = explain_one(explainer_for(app), image, values)
    direct = predictor.predict([record_from_inputs(spec, values)], [image])[0]
    assert direct["label"] in status and predictor.model_version in status
    assert next(iter(top)) == direct["label"]
    assert max(top.values()) == pytest.approx(direct["probabilities"][direct["label"]])
    assert heat.size[0] == heat.size[1] and share["image"] + share["table"] == pytest.approx(1)
    assert {"field", "value", "contribution"} <= set(table.columns)


def test_bad_input_gets_a_clear_message(app, predictor, fixture_dataset, sample):
    from modalfuse.serve.routes.explain import explainer_for

    spec = predictor.spec
    values = input_values(spec, table_records(spec, sample)[0])
    status, top, *_ = explain_one(explainer_for(app), None, values)
    assert "Upload an image" in status and top is None
    image = fixture_dataset.image_bytes(sample[spec.image_column].iloc[0])
    bad = list(values)
    bad[[f.name for f in spec.fields].index("hp")] = 999
    status, top, *_ = explain_one(explainer_for(app), image, bad)
    assert "cannot be scored" in status and "hp" in status and "255" in status and top is None
    status, *_ = explain_one(explainer_for(app), b"not an image", values)
    assert "cannot be scored" in status and "image" in status


def test_batch_upload_scores_good_rows_and_reports_bad_ones(predictor, fixture_dataset, sample,
                                                            tmp_path):
    spec = predictor.spec
    rows = sample.copy()
    rows.loc[rows.index[1], "hp"] = -5
    rows.loc[rows.index[2], spec.image_column] = "missing.png"
    table = tmp_path / "rows.csv"
    rows.to_csv(table, index=False)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in sample[spec.image_column]:
            z.writestr(name, fixture_dataset.image_bytes(name))
    summary, out, preview = score_upload(predictor, str(table), str(archive), tmp_path / "out")
    result = pd.read_csv(out)
    assert len(result) == 5 and result["error"].notna().sum() == 2
    assert "hp" in result.loc[1, "error"] and "missing.png" in result.loc[2, "error"]
    assert (result["model_version"] == predictor.model_version).all()
    assert "**5**" in summary and len(preview) == 5
    summary, out, _ = score_upload(predictor, str(table), None, tmp_path / "o2")
    assert out is None and "zip" in summary
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"nope")
    summary, out, _ = score_upload(predictor, str(table), str(not_zip), tmp_path / "o3")
    assert out is None and "not a valid zip" in summary


def test_zip_entries_cannot_leave_the_folder(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../escape.png", b"x")
    with pytest.raises(UploadError, match="outside"):
        safe_extract_zip(archive, tmp_path / "dest", UploadLimits.from_settings(Settings()))
    assert not (tmp_path / "escape.png").exists()


def test_model_tab_shows_version_metrics_and_card(app, predictor):
    md = model_markdown(predictor)
    assert predictor.model_version in md and "accuracy" in md
    card = asyncio.run(model_card_markdown(app))
    assert card.strip() and "could not be read" not in card


def test_prefill_copies_a_species_image_and_its_fields(predictor, fixture_dataset):
    spec, table = predictor.spec, fixture_dataset.table
    row = table.iloc[3]
    path, values = prefill(table, fixture_dataset.image_dir, spec, "name", row["name"])
    assert Path(path).read_bytes() == fixture_dataset.image_bytes(row[spec.image_column])
    assert record_from_inputs(spec, values)["hp"] == row["hp"]
    with pytest.raises(UploadError, match="no row with name 'Nobody'"):
        prefill(table, fixture_dataset.image_dir, spec, "name", "Nobody")
