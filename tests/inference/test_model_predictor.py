"""Model tier and the one-inference-path rule: quality, behaviour, and parity across paths."""

from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.inference.bundle import BundleError, BundleVersionWarning, load_bundle
from modalfuse.inference.evaluate import predict_dataset_rows
from modalfuse.inference.predictor import PredictionInputError, table_records
from modalfuse.serve.app import create_app


def test_bundle_describes_itself(fixture_bundle, fixture_dataset):
    meta = fixture_bundle.meta
    assert meta["dataset"]["version"] == fixture_dataset.version
    assert meta["libraries"]["lightgbm"] and meta["modalfuse_version"]
    assert meta["labels"] == sorted(meta["labels"])
    assert {"accuracy", "macro_f1", "ece"} <= set(meta["metrics"]["test"])
    assert (fixture_bundle.path / "evaluation" / "confusion_test.png").stat().st_size > 1000


def test_minimum_quality_on_the_frozen_test_split(fixture_bundle):
    test = fixture_bundle.metrics["test"]
    cv = fixture_bundle.metrics["cv"]
    assert test["accuracy"] >= 0.75, test  # 4 balanced classes: chance is 0.25
    assert cv["accuracy"]["mean"] >= 0.6, cv


def test_quality_per_class_slice(fixture_bundle):
    report = json.loads((fixture_bundle.path / "evaluation" / "metrics_test.json").read_text())
    for label, r in report["per_class"].items():
        assert r["recall"] >= 0.4, (label, r)


def _rows(ds, ids):
    return ds.table.set_index(ds.spec.id_column).loc[ids].reset_index()


def test_invariance_to_fields_the_model_does_not_take(predictor, fixture_dataset, fixture_splits):
    rows = _rows(fixture_dataset, fixture_splits.ids("test")[:5])
    recs = table_records(fixture_dataset.spec, rows)
    images = fixture_dataset.row_images(rows)
    base = predictor.predict_proba(recs, images)
    renamed = [{**r, "nickname": "x"} for r in recs]
    np.testing.assert_array_equal(base, predictor.predict_proba(renamed, images, allow_extra=True))
    # The same sprite re-encoded as GIF (what the Pokédex ships) gives the same answer.
    gifs = []
    for b in images:
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).save(buf, format="GIF", transparency=0)
        gifs.append(buf.getvalue())
    assert (predictor.predict_proba(recs, gifs).argmax(1) == base.argmax(1)).mean() >= 0.8


def test_direction_colour_of_the_sprite_moves_the_prediction(predictor, fixture_dataset,
                                                             fixture_splits):
    """Repainting a sprite in Water blue should raise P(Water): the image branch is used."""
    rows = _rows(fixture_dataset, fixture_splits.ids("test"))
    rows = rows[rows["primary_type"] == "Fire"].head(5)
    recs = table_records(fixture_dataset.spec, rows)
    images = fixture_dataset.row_images(rows)
    blue = []
    for b in images:
        px = np.asarray(Image.open(io.BytesIO(b)).convert("RGBA")).copy()
        px[px[..., 3] > 0, :3] = (40, 90, 220)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        blue.append(buf.getvalue())
    water = predictor.labels.index("Water")
    before = predictor.predict_proba(recs, images)[:, water]
    after = predictor.predict_proba(recs, blue)[:, water]
    assert (after > before).mean() >= 0.8, (before, after)


def test_training_is_repeatable(fixture_dataset, fixture_splits, tmp_path, fixture_bundle):
    from modalfuse.training.train import TrainConfig, train

    again = train(fixture_dataset, fixture_splits, tmp_path / "again",
                  TrainConfig(num_boost_round=40, seed=0), evaluate_test=False)
    assert again.model_version == fixture_bundle.model_version


def test_bad_rows_are_reported_not_fatal(predictor, fixture_dataset, fixture_splits):
    rows = _rows(fixture_dataset, fixture_splits.ids("test")[:3])
    recs = table_records(fixture_dataset.spec, rows)
    images = fixture_dataset.row_images(rows)
    recs[1] = {**recs[1], "hp": -5}
    images[2] = b"junk"
    out = predictor.predict(recs, images)
    assert "label" in out[0]
    assert "hp" in out[1]["error"] and "image" in out[2]["error"]
    with pytest.raises(PredictionInputError):
        predictor.predict_proba(recs, images)


def test_incompatible_bundle_is_refused(fixture_bundle, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(fixture_bundle.path, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    # The LightGBM kind is served from its ONNX file: ONNX Runtime is the library it needs.
    meta["libraries"]["onnxruntime"] = "0.5.0"
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"onnxruntime 0\.5\.0.*Install 'onnxruntime==0\.5\.0'"):
        load_bundle(copy)
    ort_major = fixture_bundle.meta["libraries"]["onnxruntime"].split(".")[0]
    meta["libraries"]["onnxruntime"] = f"{ort_major}.0.0"
    (copy / "bundle.json").write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_bundle(copy)
    assert any(issubclass(x.category, BundleVersionWarning) for x in w)
    meta["format_version"] = 99
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def fused_predictor(fixture_dataset, fixture_splits, tmp_path_factory):
    """A stacked bundle (two LightGBMs + a tiny CNN served by ONNX Runtime)."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.training.train import TrainConfig, train

    tiny = {"image_size": 16, "width": 4, "embed_dim": 8, "epochs": 1, "views_per_epoch": 1}
    cfg = TrainConfig(model="stacking", seed=0, num_boost_round=15, cv=False, net=tiny)
    out = tmp_path_factory.mktemp("fused") / "stacking"
    return Predictor(train(fixture_dataset, fixture_splits, out, cfg, evaluate_test=False))


@pytest.mark.parametrize("which", ["predictor", "fused_predictor"])
def test_parity_across_every_inference_path(which, request, fixture_dataset, fixture_splits,
                                            tmp_path):
    """Evaluation, CLI batch, HTTP single and HTTP batch give the same probabilities
    (for the LightGBM bundle and for a fused bundle whose CNN runs in ONNX Runtime)."""
    predictor = request.getfixturevalue(which)
    ids = fixture_splits.ids("test")
    rows = _rows(fixture_dataset, ids)
    spec = fixture_dataset.spec
    labels = predictor.labels

    evaluation = predict_dataset_rows(predictor, fixture_dataset, ids)

    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    out = tmp_path / "preds.parquet"
    res = CliRunner().invoke(cli_app, ["predict", "--input", str(csv), "--output", str(out),
                                       "--images", str(fixture_dataset.image_dir),
                                       "--bundle", str(predictor.bundle.path)])
    assert res.exit_code == 0, res.output
    cli = pd.read_parquet(out)[[f"proba_{lab}" for lab in labels]].to_numpy()

    client = TestClient(create_app(Settings(), predictor=predictor))
    bodies = []
    for rec, img in zip(table_records(spec, rows), fixture_dataset.row_images(rows), strict=True):
        fields = {k: v for k, v in rec.items() if v is not None}
        for f in spec.fields:
            if f.kind.value == "multi" and f.name in fields:
                fields[f.name] = [s for s in str(fields[f.name]).split("|") if s]
        bodies.append({"fields": fields, "image_base64": base64.b64encode(img).decode()})
    single = []
    for body in bodies:
        r = client.post("/v1/predict", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == predictor.model_version
        single.append([r.json()["probabilities"][lab] for lab in labels])
    r = client.post("/v1/predict/batch", json=bodies)
    assert r.status_code == 200 and r.json()["errors"] == 0
    batch = [[p["probabilities"][lab] for lab in labels] for p in r.json()["predictions"]]

    for name, got in {"cli": cli, "http single": single, "http batch": batch}.items():
        np.testing.assert_allclose(np.asarray(got), evaluation, atol=1e-6, rtol=0, err_msg=name)
