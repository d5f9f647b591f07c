"""Split-conformal prediction sets: the coverage guarantee on synthetic data, per-request
coverage, the randomised scores and their tie-breaks, bundles saved before them, and the
refusal of coverages outside the allowed range. Coverage against targets on real fitted
models: test_conformal_coverage.py."""

from __future__ import annotations

import numpy as np
import pytest

from modalfuse.errors import InvalidInput
from modalfuse.inference.conformal import (
    Conformal,
    conformity_scores,
    randomised_scores,
    set_report,
    tie_breaks,
)


def synthetic(rng: np.random.Generator, n: int, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities from a Dirichlet, labels drawn from a *different* (sharper) distribution,
    so the model is miscalibrated: the guarantee must hold anyway."""
    logits = rng.normal(0, 1.5, (n, c))
    p_model = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p_true = np.exp(2 * logits) / np.exp(2 * logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p_true])
    return p_model, y


@pytest.mark.parametrize(("lam", "k_reg"), [(0.0, 0), (0.05, 1)])
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_coverage_guarantee_holds_on_average(lam, k_reg, coverage):
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(200):
        p_cal, y_cal = synthetic(rng, 200)
        p_new, y_new = synthetic(rng, 200)
        sets = Conformal.fit(p_cal, y_cal, lam, k_reg).sets(p_new, coverage)
        hits.append(sets[np.arange(len(y_new)), y_new].mean())
    mean = float(np.mean(hits))
    # Marginal coverage between the target and target + 1 / (n + 1) (randomised scores do not
    # tie), up to the Monte-Carlo error of 200 x 200 draws: its standard error is below 0.003.
    assert coverage - 0.01 <= mean <= coverage + 1 / 201 + 0.01


def test_sets_grow_with_coverage_and_are_never_empty():
    rng = np.random.default_rng(1)
    p, y = synthetic(rng, 500)
    c = Conformal.fit(p, y)
    sizes = [c.sets(p, cov).sum(1).mean() for cov in (0.5, 0.8, 0.9, 0.99)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert (c.sets(p, 0.5).sum(1) >= 1).all()
    top = p.argmax(1)
    assert c.sets(p, 0.5)[np.arange(len(p)), top].all()


def test_quantile_is_the_finite_sample_one():
    c = Conformal(np.arange(1, 10) / 10.0)  # 9 scores: 0.1 .. 0.9
    assert c.quantile(0.8) == pytest.approx(0.8)  # ceil(10 * 0.8) = 8th smallest
    assert c.quantile(0.95) == float("inf")  # ceil(10 * 0.95) = 10 > 9: every label


def test_scores_are_cumulative_mass_plus_rank_penalty():
    p = np.array([[0.5, 0.3, 0.2]])
    np.testing.assert_allclose(conformity_scores(p), [[0.5, 0.8, 1.0]])
    np.testing.assert_allclose(conformity_scores(p, lam=0.1, k_reg=1), [[0.5, 0.9, 1.2]])


def test_randomised_scores_interpolate_from_the_label_above():
    p = np.array([[0.3, 0.5, 0.2]])  # ranks: label 1, label 0, label 2
    half = np.array([0.5])
    # top label 0; the others: the score above plus half the step to their own
    np.testing.assert_allclose(randomised_scores(p, u=half), [[0.65, 0.0, 0.9]], atol=1e-8)
    np.testing.assert_allclose(randomised_scores(p, 0.1, 1, half), [[0.7, 0.0, 1.05]], atol=1e-8)
    # probability exactly 0 still gets a step, so u separates tied labels
    one_hot = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    s = randomised_scores(one_hot, u=np.array([0.2, 0.7]))
    assert s[0, 1] < s[1, 1] < s[0, 2] < s[1, 2]


def test_tie_breaks_are_fixed_by_the_probabilities_and_spread_uniformly():
    p = np.random.default_rng(3).dirichlet(np.ones(6), 20000)
    u = tie_breaks(p)
    np.testing.assert_array_equal(u[5:9], tie_breaks(p[5:9]))  # the same, alone or in a batch
    np.testing.assert_array_equal(tie_breaks(p[:3] + 1e-9), u[:3])  # below the rounding
    assert ((u >= 0) & (u < 1)).all() and len(np.unique(u)) == len(u)
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.abs(counts - 2000).max() < 150  # ~3.4 sd of a binomial count of 2,000


def test_sets_are_the_labels_whose_randomised_score_is_within_the_quantile():
    # the shortcut fit_conformal takes when it compares RAPS settings
    rng = np.random.default_rng(4)
    p, y = synthetic(rng, 400)
    c = Conformal.fit(p, y, 0.02, 2)
    for cov in (0.6, 0.9):
        np.testing.assert_array_equal(c.sets(p, cov), randomised_scores(p, 0.02, 2) <= c.quantile(cov))


def test_a_calibration_saved_before_randomised_scores_keeps_its_rule():
    rng = np.random.default_rng(5)
    p, y = synthetic(rng, 300)
    scores = np.sort(conformity_scores(p, 0.01, 2)[np.arange(len(y)), y])
    saved = {"method": "raps", "lam": 0.01, "k_reg": 2, "default_coverage": 0.9,
             "source": "out-of-fold", "n": len(scores), "scores": scores.tolist()}
    c = Conformal.from_dict(saved)
    assert not c.randomised and not c.to_dict()["randomised"]
    expected = conformity_scores(p, 0.01, 2) <= c.quantile(0.9) + 1e-12
    expected[np.arange(len(p)), p.argmax(1)] = True
    np.testing.assert_array_equal(c.sets(p), expected)
    assert Conformal.from_dict(Conformal.fit(p, y).to_dict()).randomised


@pytest.mark.parametrize("bad", [0.3, 1.0, float("nan"), "0.9"])
def test_coverage_outside_the_range_is_refused(bad):
    c = Conformal(np.linspace(0, 1, 50))
    with pytest.raises(InvalidInput, match=r"coverage must be a number from 0\.5 to 0\.99"):
        c.sets(np.full((1, 3), 1 / 3), bad)


def test_round_trip_and_report():
    rng = np.random.default_rng(2)
    p, y = synthetic(rng, 300)
    c = Conformal.fit(p, y, 0.01, 2)
    again = Conformal.from_dict(c.to_dict())
    np.testing.assert_array_equal(c.sets(p), again.sets(p))
    rep = set_report(c.sets(p), y, [f"c{j}" for j in range(6)])
    assert 0 < rep["mean_size"] <= 6 and set(rep["per_class_coverage"]) == {f"c{j}" for j in range(6)}
