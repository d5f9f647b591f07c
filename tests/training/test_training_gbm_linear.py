"""Training tier: the `gbm_linear` late fusion (trees + logistic regression, geometric mean) and
its `linear` part — they train, save, load and serve identically, and a fold's model never
depends on that fold's labels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from modalfuse.errors import InvalidInput, NotFitted
from modalfuse.inference.bundle import load_bundle
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.models.calibration import CalibratedModel
from modalfuse.models.fused import GeometricPoolModel, LinearSoftmaxModel
from modalfuse.models.gbm import GBMModel
from modalfuse.models.registry import load_model
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import FoldEngine, training_labels
from modalfuse.training.train import train


@pytest.fixture(scope="module")
def engine(fixture_dataset, fixture_splits):
    cfg = TrainConfig(model="gbm_linear", seed=0, num_boost_round=20)
    return FoldEngine(fixture_dataset, fixture_splits, cfg,
                      training_labels(fixture_dataset, fixture_splits))


@pytest.fixture(scope="module")
def bundle(fixture_dataset, fixture_splits, engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("gbm_linear") / "bundle"
    return train(fixture_dataset, fixture_splits, out, engine.cfg, engine=engine)


def test_trains_saves_loads_and_serves_identically(bundle, engine, fixture_dataset, fixture_splits):
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["training"]["config"]["model"] == "gbm_linear"
    assert meta["metrics"]["cv"]["accuracy"]["mean"] > 0.5 and meta["cv_oof"]["rows"] > 0
    loaded = load_bundle(bundle.path).model
    assert isinstance(loaded, CalibratedModel) and isinstance(loaded.inner, GeometricPoolModel)
    assert [type(p) for p in loaded.inner.parts.values()] == [GBMModel, LinearSoftmaxModel]

    ids = fixture_splits.ids("test")
    rows = fixture_dataset.table.set_index("id").loc[ids].reset_index()
    served = Predictor.from_path(bundle.path).predict_proba(
        table_records(fixture_dataset.spec, rows), fixture_dataset.row_images(rows))
    in_memory = CalibratedModel(engine.fit("gbm_linear"), meta["training"]["temperature"])
    want = in_memory.predict_proba(engine.batch(frozenset(), engine.raw.rows(ids)))
    np.testing.assert_allclose(served, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-9)


def test_pool_is_the_geometric_mean_of_parts_fitted_outside_the_fold(engine):
    k = engine.folds[0]
    held = frozenset({k})
    pool = engine.fit("gbm_linear", held)
    assert isinstance(pool, GeometricPoolModel) and pool.weights == [0.5, 0.5]
    assert pool.parts["gbm"] is engine.fit("gbm", held)
    assert pool.parts["linear"] is engine.fit("linear", held)
    batch = engine.batch(held, engine.fold_rows(k))
    z = sum(0.5 * np.log(np.clip(p.predict_proba(batch), 1e-7, 1)) for p in pool.parts.values())
    want = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(pool.predict_proba(batch), want / want.sum(axis=1, keepdims=True),
                               atol=1e-12)


def test_a_folds_model_ignores_that_folds_labels(engine, fixture_dataset, fixture_splits):
    """Scrambling the labels of fold k changes nothing the model fitted without fold k says."""
    k = engine.folds[0]
    fold_rows = engine.fold_rows(k)
    y = engine.raw.y.copy()
    y[fold_rows] = np.random.default_rng(0).permutation(y[fold_rows])
    y[fold_rows[:3]] = (y[fold_rows[:3]] + 1) % engine.n_classes  # surely changed
    other = FoldEngine(fixture_dataset, fixture_splits, engine.cfg, engine.labels,
                       raw=dataclasses.replace(engine.raw, y=y))
    held = frozenset({k})
    batch = engine.batch(held, fold_rows)
    np.testing.assert_array_equal(other.fit("gbm_linear", held).predict_proba(batch),
                                  engine.fit("gbm_linear", held).predict_proba(batch))


def test_linear_model_round_trips_and_refuses_misuse(engine, tmp_path):
    batch = engine.batch(frozenset(), engine.rows(frozenset()))
    with pytest.raises(NotFitted, match="not fitted"):
        LinearSoftmaxModel().predict_proba(batch)
    with pytest.raises(InvalidInput, match="must be > 0"):
        LinearSoftmaxModel(c=0)
    with pytest.raises(InvalidInput, match="2 parts"):
        GeometricPoolModel({"a": LinearSoftmaxModel(), "b": LinearSoftmaxModel()}, [1.0])
    for use_image_stats in (True, False):
        model = LinearSoftmaxModel(c=0.3, use_image_stats=use_image_stats)
        model.fit(batch, engine.raw.y[engine.rows(frozenset())], engine.n_classes)
        d = tmp_path / str(use_image_stats)
        d.mkdir()
        back = load_model(d, model.save(d))
        np.testing.assert_array_equal(back.predict_proba(batch), model.predict_proba(batch))
