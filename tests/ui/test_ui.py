"""The UI's functions (without a browser): one explained prediction, batch upload, model tab."""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from modalfuse.config import Settings
from modalfuse.inference.predictor import table_records
from modalfuse.inference.uploads import UploadLimits, safe_extract_zip
from modalfuse.ui.app import (
    UploadError,
    empty_values,
    explain_one,
    heatmap_image,
    input_values,
    model_card_markdown,
    model_markdown,
    prefill,
    preview_image,
    record_from_inputs,
    score_upload,
)
from modalfuse.ui.views import percent


def noise_png(seed: int = 0) -> bytes:
    """A random-noise RGB image: nothing like a sprite, so the image OOD detector flags it."""
    px = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px, "RGB").save(buf, format="PNG")
    return buf.getvalue()


SHARE = re.compile(r"(table|image) share (-?\d+\.\d) %")


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
    view = explain_one(explainer_for(app), image, values)
    e = view.explanation
    direct = predictor.predict([record_from_inputs(spec, values)], [image])[0]
    assert direct["label"] in view.status and predictor.model_version in view.status
    assert e.label == direct["label"] and e.prediction["modalities"]["used"] == ["fields", "image"]
    assert e.prediction["prediction_set"] == direct["prediction_set"]
    assert direct["label"] in view.top and percent(direct["probabilities"][direct["label"]]) in view.top
    assert view.heatmap.size[0] == 2 * view.heatmap.size[1] + 3 * 6  # sprite | gap | heatmap
    assert "mf-heat-legend" in view.legend and "orange" in view.legend
    assert list(view.contributions.columns) == ["input", "value", "contribution (pp)"]


def test_bar_and_status_line_state_the_same_signed_shares(app, predictor, fixture_dataset, sample):
    from modalfuse.serve.routes.explain import explainer_for

    spec = predictor.spec
    image = fixture_dataset.image_bytes(sample[spec.image_column].iloc[1])
    view = explain_one(explainer_for(app), image, input_values(spec, table_records(spec, sample)[1]))
    e = view.explanation
    in_status, in_bar = dict(SHARE.findall(view.status)), dict(SHARE.findall(view.share))
    assert in_status == in_bar and set(in_status) == {"table", "image"}
    assert float(in_status["image"]) == pytest.approx(100 * e.image_share, abs=0.051)
    assert float(in_status["table"]) == pytest.approx(100 * e.table_share, abs=0.051)
    # Signed: the shares are each modality's contribution over probability - base_value.
    assert e.image_share == pytest.approx(e.image_contribution / (e.probability - e.base_value))
    assert e.image_share + e.table_share == pytest.approx(1.0)
    # The table is in the unit its label says: percentage points (100 x the fraction).
    image_row = view.contributions[view.contributions["input"].str.contains("whole image")]
    assert float(image_row["contribution (pp)"].iloc[0]) == pytest.approx(
        100 * e.image_contribution, abs=0.006)


def test_probabilities_never_read_100_percent_unless_they_are_1():
    assert percent(0.996) == "99.6 %" and percent(0.9996) == ">99.9 %"
    assert percent(0.99999999998) == ">99.9 %" and percent(1.0) == "100 %"
    assert percent(0.00001) == "<0.1 %" and percent(0.0) == "0 %" and percent(0.1234) == "12.3 %"


def test_an_empty_form_is_empty_and_booleans_can_be_unset(predictor):
    spec = predictor.spec
    assert record_from_inputs(spec, empty_values(spec)) == {}
    values = input_values(spec, {"is_legendary": True, "is_mythical": False})
    assert record_from_inputs(spec, values) == {"is_legendary": True, "is_mythical": False}


def test_fields_only_and_image_only_are_explained(app, predictor, fixture_dataset, sample):
    from modalfuse.serve.routes.explain import explainer_for

    spec = predictor.spec
    values = input_values(spec, table_records(spec, sample)[0])
    view = explain_one(explainer_for(app), None, values)
    e = view.explanation
    assert "fields only" in view.status and e.heatmap is None and view.heatmap is None
    assert e.image_contribution == 0.0 and e.image_share == 0.0 and "image only" not in view.status
    assert "No heatmap" in view.legend and 'id="mf-modalities"' in view.trust
    image = fixture_dataset.image_bytes(sample[spec.image_column].iloc[0])
    view = explain_one(explainer_for(app), image, empty_values(spec))
    e = view.explanation
    assert "image only" in view.status and all(v == 0.0 for v in e.contributions.values())
    assert e.table_share == 0.0 and view.heatmap is not None


def test_an_out_of_distribution_image_is_flagged_with_its_prediction_set(app, predictor):
    from modalfuse.serve.routes.explain import explainer_for

    view = explain_one(explainer_for(app), noise_png(), empty_values(predictor.spec))
    assert 'id="mf-ood"' in view.trust and "unlike the training images" in view.trust
    assert 'id="mf-prediction-set"' in view.trust and "coverage" in view.trust
    shown = re.findall(r'class="mf-p">([^<]*)<', view.top)
    best = max(view.explanation.prediction["probabilities"].values())
    assert len(shown) >= 2 and (best == 1.0 or not any(t.startswith("100") for t in shown)), shown


def test_the_heatmap_is_redrawn_at_any_opacity_and_the_upload_previewed(app, predictor,
                                                                      fixture_dataset, sample):
    from modalfuse.serve.routes.explain import explainer_for

    spec = predictor.spec
    image = fixture_dataset.image_bytes(sample[spec.image_column].iloc[0])
    view = explain_one(explainer_for(app), image, input_values(spec, table_records(spec, sample)[0]))
    heat = {**view.heat, "heatmap": np.random.default_rng(0).normal(size=view.heat["heatmap"].shape)}
    faint, strong = heatmap_image(heat, 0.1), heatmap_image(heat, 1.0)
    assert faint.size == strong.size and faint.tobytes() != strong.tobytes()
    assert heatmap_image(None, 0.5) is None
    shown, caption = preview_image(predictor, image)
    assert shown is not None and shown.width >= 96 and "Uploaded image" in caption
    assert preview_image(predictor, b"not an image")[0] is None
    assert preview_image(predictor, None)[0] is None


def test_bad_input_gets_a_clear_message(app, predictor, fixture_dataset, sample):
    from modalfuse.serve.routes.explain import explainer_for

    spec = predictor.spec
    values = input_values(spec, table_records(spec, sample)[0])
    view = explain_one(explainer_for(app), None, empty_values(spec))
    assert "Nothing to predict from" in view.status and view.explanation is None
    image = fixture_dataset.image_bytes(sample[spec.image_column].iloc[0])
    bad = list(values)
    bad[[f.name for f in spec.fields].index("hp")] = 999
    view = explain_one(explainer_for(app), image, bad)
    assert "cannot be scored" in view.status and "hp" in view.status and "255" in view.status
    assert view.top == "" and view.explanation is None
    view = explain_one(explainer_for(app), b"not an image", values)
    assert "cannot be scored" in view.status and "image" in view.status


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
