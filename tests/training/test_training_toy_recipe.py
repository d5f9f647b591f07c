"""Training tier: a recipe and a served kind written outside the package (here, in the test
folder) train, save, load, serve, batch-score and explain with no edit to modalfuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.inference.batch import predict_file
from modalfuse.inference.bundle import load_bundle
from modalfuse.inference.explain import Explainer
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.models.registry import register as register_kind
from modalfuse.serve.app import create_app
from modalfuse.training import recipes
from modalfuse.training.config import TrainConfig
from modalfuse.training.train import train


@register_kind()
class NearestCentroid:
    """A toy served kind: softmax of minus the distance to each class's mean tabular row."""

    kind: ClassVar[str] = "toy_centroid"

    def __init__(self, centroids: np.ndarray):
        self.centroids = centroids

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        d = ((batch.tabular_dense[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        z = -(d - d.min(1, keepdims=True))
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def save(self, directory: Path) -> dict:
        np.save(directory / "centroids.npy", self.centroids)
        return {"kind": self.kind, "file": "centroids.npy"}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> NearestCentroid:
        return cls(np.load(directory / meta["file"]))


def fit_centroids(engine, excluded) -> NearestCentroid:
    """The toy recipe: class means of the standardized tabular features of the fold's rows."""
    rows = engine.rows(excluded)
    x, y = engine.batch(excluded, rows).tabular_dense, engine.raw.y[rows]
    return NearestCentroid(np.stack([x[y == k].mean(0) if (y == k).any() else np.zeros(x.shape[1])
                                     for k in range(engine.n_classes)]))


@pytest.fixture(scope="module")
def toy_bundle(fixture_dataset, fixture_splits, tmp_path_factory):
    recipes.register(recipes.Recipe("toy_centroid", "toy: nearest class centroid", fit_centroids))
    try:
        out = tmp_path_factory.mktemp("toy") / "bundle"
        yield train(fixture_dataset, fixture_splits, out, TrainConfig(model="toy_centroid", seed=0))
    finally:
        recipes.RECIPES.pop("toy_centroid")


def test_toy_recipe_trains_saves_and_loads(toy_bundle):
    meta = json.loads((toy_bundle.path / "bundle.json").read_text())
    assert meta["training"]["config"]["model"] == "toy_centroid"
    assert meta["metrics"]["cv"]["accuracy"]["mean"] > 0.5  # the fixture's classes separate
    assert meta["cv_oof"]["rows"] > 0  # out-of-fold predictions for the promotion gate
    loaded = load_bundle(toy_bundle.path)
    assert isinstance(loaded.model.inner, NearestCentroid)  # calibrated like every recipe


def test_toy_recipe_serves_batch_scores_and_explains(toy_bundle, fixture_dataset, fixture_splits,
                                                     tmp_path):
    predictor = Predictor.from_path(toy_bundle.path)
    ids = fixture_splits.ids("test")[:5]
    rows = fixture_dataset.table.set_index("id").loc[ids].reset_index()
    records, images = table_records(fixture_dataset.spec, rows), fixture_dataset.row_images(rows)
    direct = predictor.predict_proba(records, images)

    client = TestClient(create_app(Settings(), predictor=predictor))
    body = predictor.bundle.meta["example"]
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == predictor.model_version

    src = tmp_path / "rows.parquet"
    rows.to_parquet(src)
    predict_file(predictor, src, fixture_dataset.image_dir, tmp_path / "out.parquet")
    out = pd.read_parquet(tmp_path / "out.parquet")
    cols = [f"proba_{lab}" for lab in predictor.labels]
    np.testing.assert_allclose(out[cols].to_numpy(), direct, atol=1e-6)

    e = Explainer(predictor).explain(records[0], images[0])
    total = sum(e.contributions.values())
    assert np.isfinite(total) and e.label in predictor.labels
