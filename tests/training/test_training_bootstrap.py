"""Training tier: the paired bootstrap of the macro-F1 gain on out-of-fold predictions."""

from __future__ import annotations

import numpy as np
import pytest

from modalfuse.errors import InvalidInput
from modalfuse.training.bootstrap import paired_bootstrap_gain, resample_counts

LABELS = ["a", "b", "c", "d"]


def _onehot_noisy(y: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose argmax is the truth for about `accuracy` of the rows."""
    k = len(LABELS)
    pred = np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, k, len(y)))
    proba = np.full((len(y), k), 0.1)
    proba[np.arange(len(y)), pred] = 0.7
    return proba / proba.sum(axis=1, keepdims=True)


def test_a_clearly_better_model_has_an_interval_above_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, len(LABELS), 400)
    good, bad = _onehot_noisy(y, 0.9, rng), _onehot_noisy(y, 0.5, rng)
    folds = np.arange(len(y)) % 5
    for f in (None, folds):
        out = paired_bootstrap_gain(y, good, bad, LABELS, n_boot=500, folds=f)
        assert out["gain"] > 0.2 and 0 < out["low"] <= out["gain_mean"] <= out["high"]
        assert out["p_not_better"] == 0.0
    worse = paired_bootstrap_gain(y, bad, good, LABELS, n_boot=500)
    assert worse["high"] < 0


def test_identical_models_gain_nothing():
    rng = np.random.default_rng(2)
    y = rng.integers(0, len(LABELS), 200)
    p = _onehot_noisy(y, 0.6, rng)
    out = paired_bootstrap_gain(y, p, p.copy(), LABELS, n_boot=300)
    assert out["gain"] == out["gain_mean"] == out["low"] == out["high"] == 0.0
    assert out["model_macro_f1"] == out["base_macro_f1"]


def test_seeded_and_fold_stratified_resampling():
    rng = np.random.default_rng(3)
    y = rng.integers(0, len(LABELS), 120)
    a, b = _onehot_noisy(y, 0.8, rng), _onehot_noisy(y, 0.6, rng)
    assert paired_bootstrap_gain(y, a, b, LABELS, seed=7) == paired_bootstrap_gain(y, a, b, LABELS,
                                                                                 seed=7)
    folds = np.repeat([0, 1, 2], [10, 30, 80])
    w = resample_counts(len(y), 50, np.random.default_rng(0), folds)
    for f in (0, 1, 2):  # every resample keeps each fold's size
        np.testing.assert_array_equal(w[:, folds == f].sum(axis=1), (folds == f).sum())


def test_refuses_mismatched_shapes_and_levels():
    y = np.array([0, 1, 2])
    p = np.eye(4)[y]
    with pytest.raises(InvalidInput, match="probabilities must both be"):
        paired_bootstrap_gain(y, p, p[:2], LABELS)
    with pytest.raises(InvalidInput, match="level must lie"):
        paired_bootstrap_gain(y, p, p, LABELS, level=1.5)
