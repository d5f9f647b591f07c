"""Prediction sets follow the coverage asked for: `fit_conformal` on the probabilities of
real fitted models (not the Pokémon data), at 80, 90 and 95 %.

Each model is fitted once on its own rows; the rest form a pool of held-out rows, split at
random many times into calibration rows (given to `fit_conformal`, which tunes RAPS on 30 %
of them and calibrates on the other 70 %) and test rows. For a fixed pool a random split
makes calibration and test rows exchangeable, so the mean test coverage over splits lies
between the target c and c + 1 / (n + 1) (n calibration rows) when the scores do not tie,
and the splits' Monte-Carlo error is the only slack (`TOLERANCE_SE` standard errors).

Fixtures: a logistic regression (smooth probabilities), k nearest neighbours (probabilities
in steps of 1/10: many exact ties) and an over-sharp LightGBM (near one-hot): the last two
are where non-randomised scores gave coverage flat across targets and above them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from modalfuse.inference.conformal import Conformal, conformity_scores
from modalfuse.training.companions import fit_conformal

TARGETS = (0.8, 0.9, 0.95)
SPLITS, N_CALIB = 60, 1000
# A split's coverage varies by the calibration quantile's spread, c(1 - c) / (n + 2), plus the
# binomial spread of its test rows, c(1 - c) / n_test; 4 standard errors of the mean of
# SPLITS splits leave room for chance (about 1 in 16,000 per check), not for a bias.
TOLERANCE_SE = 4.0


def classification(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eight classes with 5 % label noise: 1,000 rows to fit a model, 4,000 held out."""
    x, y = make_classification(n_samples=5000, n_features=20, n_informative=10, n_redundant=2,
                               n_classes=8, n_clusters_per_class=1, class_sep=1.0, flip_y=0.05,
                               random_state=seed)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@cache
def logistic() -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of a logistic regression, and the true labels."""
    x, y, x_held, y_held = classification()
    return LogisticRegression(max_iter=1000).fit(x, y).predict_proba(x_held), y_held


@cache
def neighbours() -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of 10 nearest neighbours: multiples of 0.1, many exact ties."""
    x, y, x_held, y_held = classification()
    return KNeighborsClassifier(10).fit(x, y).predict_proba(x_held), y_held


@cache
def sharp_gbm() -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of an unregularised, fast-learning LightGBM: near one-hot."""
    x, y, x_held, y_held = classification()
    model = lgb.LGBMClassifier(n_estimators=200, learning_rate=1.0, num_leaves=63,
                               min_child_samples=2, reg_lambda=0.0, n_jobs=1, random_state=0,
                               verbose=-1)
    return np.asarray(model.fit(x, y).predict_proba(x_held)), y_held


FIXTURES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "logistic": logistic, "neighbours": neighbours, "sharp_gbm": sharp_gbm}


def measure(proba: np.ndarray, y: np.ndarray,
            calibrate: Callable[[np.ndarray, np.ndarray, int], Conformal]) -> dict:
    """Mean test coverage and set size per target over random calibration/test splits."""
    rng = np.random.default_rng(0)
    coverage, size, n_scores = np.zeros(len(TARGETS)), np.zeros(len(TARGETS)), 0
    for split in range(SPLITS):
        order = rng.permutation(len(y))
        calib, test = order[:N_CALIB], order[N_CALIB:]
        conformal = calibrate(proba[calib], y[calib], split)
        n_scores = len(conformal.scores)
        for i, target in enumerate(TARGETS):
            member = conformal.sets(proba[test], target)
            coverage[i] += member[np.arange(len(test)), y[test]].mean() / SPLITS
            size[i] += member.sum(axis=1).mean() / SPLITS
    return {"coverage": coverage, "size": size, "n": n_scores, "n_test": len(y) - N_CALIB}


def tolerance(target: float, n: int, n_test: int) -> float:
    """`TOLERANCE_SE` standard errors of a mean coverage over SPLITS splits."""
    variance = target * (1 - target) * (1 / (n + 2) + 1 / n_test)
    return TOLERANCE_SE * math.sqrt(variance / SPLITS)


@pytest.fixture(scope="module", params=list(FIXTURES))
def measured(request) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """(name, probabilities, labels, what `fit_conformal` gives on them)."""
    proba, y = FIXTURES[request.param]()
    return request.param, proba, y, measure(proba, y, fit_conformal)


def test_fixtures_are_what_they_claim():
    # Below 80 % top-1 accuracy, so every target is reachable with non-empty sets.
    for make in FIXTURES.values():
        proba, y = make()
        assert 0.5 < (proba.argmax(axis=1) == y).mean() < 0.78
    proba, y = neighbours()  # 4,000 rows, yet their true labels' mass scores take 11 values
    assert len(np.unique(np.round(conformity_scores(proba)[np.arange(len(y)), y], 9))) <= 11
    proba, _ = sharp_gbm()
    assert np.median(proba.max(axis=1)) > 0.98


def test_coverage_lies_within_the_finite_sample_bound(measured):
    name, _, _, m = measured
    for target, got in zip(TARGETS, m["coverage"], strict=True):
        tol = tolerance(target, m["n"], m["n_test"])
        assert target - tol <= got <= target + 1 / (m["n"] + 1) + tol, (name, target, got, tol)


def test_coverage_and_set_size_rise_with_the_target(measured):
    name, _, _, m = measured
    assert np.all(np.diff(m["coverage"]) > 0), (name, m["coverage"])
    assert np.all(np.diff(m["size"]) > 0), (name, m["size"])
    # and by about as much as the target does, not flat
    assert np.all(np.diff(m["coverage"]) > 0.6 * np.diff(TARGETS)), (name, m["coverage"])


@pytest.mark.parametrize("name", ["neighbours", "sharp_gbm"])
def test_scores_without_tie_breaks_cover_too_much_where_probabilities_tie(name):
    """The cause of the flat coverage: the same calibration rows scored without `u` (the rule
    of bundles saved before it) pile up on a few values, and 80 % gets far more."""
    proba, y = FIXTURES[name]()

    def unrandomised(p: np.ndarray, labels: np.ndarray, _: int) -> Conformal:
        scores = conformity_scores(p)[np.arange(len(labels)), labels]
        return Conformal(np.sort(scores), randomised=False)

    old = measure(proba, y, unrandomised)["coverage"]
    new = measure(proba, y, lambda p, labels, _: Conformal.fit(p, labels))["coverage"]
    assert old[0] > 0.88 and old[2] - old[0] < 0.1, old  # above 80 % by 8 points, and flat
    np.testing.assert_allclose(new, TARGETS, atol=0.01)


def test_sets_are_nested_across_targets(measured):
    _, proba, y, _ = measured
    conformal = fit_conformal(proba[:N_CALIB], y[:N_CALIB])
    sets = [conformal.sets(proba[N_CALIB:], target) for target in TARGETS]
    for smaller, larger in zip(sets, sets[1:], strict=False):
        assert not (smaller & ~larger).any()
