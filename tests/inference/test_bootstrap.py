"""The paired bootstrap of the macro-F1 gain on out-of-fold predictions, and its two callers:
the ablation (rows resampled within folds) and the promotion gate (over all rows) keep the
exact draws, so the intervals they print do not move."""

from __future__ import annotations

import numpy as np
import pytest

from modalfuse.errors import InvalidInput
from modalfuse.inference.bootstrap import paired_bootstrap_gain, resample_counts
from modalfuse.inference.oof import OutOfFold

LABELS = ["a", "b", "c", "d"]


def _onehot_noisy(y: np.ndarray, accuracy: float, rng: np.random.Generator,
                  k: int = len(LABELS)) -> np.ndarray:
    """Probabilities whose argmax is the truth for about `accuracy` of the rows."""
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
        out = paired_bootstrap_gain(y, good, bad, LABELS, resamples=500, folds=f)
        assert out.gain > 0.2 and 0 < out.low <= out.mean <= out.high
        assert out.p_not_better == 0.0
        assert out.within_folds is (f is not None)
        assert (out.confidence, out.resamples, out.rows) == (0.9, 500, 400)
    worse = paired_bootstrap_gain(y, bad, good, LABELS, resamples=500)
    assert worse.high < 0


def test_identical_models_gain_nothing():
    rng = np.random.default_rng(2)
    y = rng.integers(0, len(LABELS), 200)
    p = _onehot_noisy(y, 0.6, rng)
    out = paired_bootstrap_gain(y, p, p.copy(), LABELS, resamples=300)
    assert out.gain == out.mean == out.low == out.high == 0.0
    assert out.model_f1 == out.base_f1


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


def test_refuses_mismatched_shapes_and_confidences():
    y = np.array([0, 1, 2])
    p = np.eye(4)[y]
    with pytest.raises(InvalidInput, match="probabilities must both be"):
        paired_bootstrap_gain(y, p, p[:2], LABELS)
    with pytest.raises(InvalidInput, match="confidence must lie"):
        paired_bootstrap_gain(y, p, p, LABELS, confidence=1.5)


# What each caller printed before the two bootstraps (training/bootstrap.py, within folds,
# and inference/oof.py, over all rows) became one: the same synthetic out-of-fold rows must
# give these exact numbers, so docs/ablation.md's gain column and the gate's reasons stay put.
ABLATION_BEFORE = {"model_macro_f1": 0.8114238634039352, "base_macro_f1": 0.6786804945933623,
                   "gain": 0.13274336881057291, "gain_mean": 0.1340755109727586,
                   "low": 0.050996621478756485, "high": 0.21698135211979097, "level": 0.9,
                   "n_boot": 2000, "rows": 150, "p_not_better": 0.005}
GATE_BEFORE = {"challenger": 0.8114238634039352, "champion": 0.6786804945933623,
               "gain": 0.13274336881057291, "low": 0.05344556423416409,
               "high": 0.2187676434309169, "confidence": 0.9, "resamples": 2000, "rows": 150}


def _two_models() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five labels, 150 rows in five folds of unequal size, a better and a worse model."""
    rng = np.random.default_rng(2024)
    labels, n = ["a", "b", "c", "d", "e"], 150
    y = rng.integers(0, 5, n)
    folds = np.repeat(np.arange(5), [20, 25, 30, 35, 40])

    def noisy(accuracy: float) -> np.ndarray:
        pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, 5, n))
        p = np.full((n, 5), 0.1)
        p[np.arange(n), pred] = 0.6
        return p / p.sum(axis=1, keepdims=True)

    return labels, y, folds, noisy(0.75), noisy(0.6)


def test_the_ablation_keeps_its_within_fold_draws():
    from modalfuse.training.ablation import gain_cell, gain_record

    labels, y, folds, model, base = _two_models()
    gain = paired_bootstrap_gain(y, model, base, labels, seed=42, folds=folds)  # as run_ablation
    assert gain.within_folds
    record = gain_record(gain)
    assert record == ABLATION_BEFORE and list(record) == list(ABLATION_BEFORE)
    assert gain_cell({"model": "stacking", "gain_over_baseline": record}) == "+0.133 [+0.051, +0.217]"


def test_the_gate_keeps_its_draws_over_all_rows():
    from modalfuse.tracking.gate import Gate, interval_record

    labels, y, folds, model, base = _two_models()
    ids = np.array([f"r{i:03d}" for i in range(len(y))])
    gain = Gate().bootstrap(OutOfFold(ids, folds, y, model, labels),
                            OutOfFold(ids, folds, y, base, labels))
    assert not gain.within_folds
    record = interval_record(gain)
    assert record == GATE_BEFORE and list(record) == list(GATE_BEFORE)
