"""LightGBM parts are served by ONNX Runtime: the loaded bundle's ONNX file answers like the
native booster (within 1e-5), and a serving install without lightgbm loads and scores it."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from modalfuse.errors import ModelError
from modalfuse.inference.bundle import load_bundle
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.models.gbm import lightgbm_parts

TOLERANCE = 1e-5  # float32 inputs in ONNX vs float64 in LightGBM


@pytest.fixture(scope="module")
def rows(fixture_dataset):
    table = fixture_dataset.table
    return table_records(fixture_dataset.spec, table), fixture_dataset.row_images(table)


def test_every_lightgbm_part_is_served_by_onnx_and_agrees_with_lightgbm(predictor, rows):
    bundle = predictor.bundle
    parts = [*lightgbm_parts(bundle.model),
             *(g for m in bundle.companions.models.values() for g in lightgbm_parts(m))]
    assert len(parts) == 3  # the main model's, the fields-only and the image-only models'
    prep = predictor.prepare(*rows)
    for gbm in parts:
        assert gbm.onnx_ is not None and gbm.booster_ is not None
        served, native = gbm.predict_proba(prep.batch), gbm.native_proba(prep.batch)
        assert np.abs(served - native).max() <= TOLERANCE
        assert (served.argmax(1) == native.argmax(1)).all()
    assert (bundle.path / "inner" / "model.onnx").exists()


def test_a_serving_install_without_lightgbm_scores_the_bundle(predictor, rows, monkeypatch):
    want = predictor.predict_proba(*rows)
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` now fails
    served = Predictor(load_bundle(predictor.bundle.path))
    assert all(g.booster_ is None for g in lightgbm_parts(served.bundle.model))
    np.testing.assert_allclose(served.predict_proba(*rows), want, atol=1e-12)


def test_an_old_bundle_without_onnx_needs_lightgbm(predictor, tmp_path, monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(predictor.bundle.path, old)
    meta = json.loads((old / "bundle.json").read_text())
    meta["model"]["parts"][0].pop("onnx_file")
    (old / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(old).model.inner.onnx_ is None  # read natively where lightgbm is
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(ModelError, match="install lightgbm to read it, or retrain it"):
        load_bundle(old)
