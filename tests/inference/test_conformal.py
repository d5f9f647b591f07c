"""Split-conformal prediction sets: the coverage guarantee on synthetic data, per-request
coverage, and the refusal of coverages outside the allowed range."""

from __future__ import annotations

import numpy as np
import pytest

from modalfuse.errors import InvalidInput
from modalfuse.inference.conformal import Conformal, conformity_scores, set_report


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
    hits, upper = [], coverage + 0.1
    for _ in range(200):
        p_cal, y_cal = synthetic(rng, 200)
        p_new, y_new = synthetic(rng, 200)
        sets = Conformal.fit(p_cal, y_cal, lam, k_reg).sets(p_new, coverage)
        hits.append(sets[np.arange(len(y_new)), y_new].mean())
    mean = float(np.mean(hits))
    # Marginal coverage >= target (up to the Monte-Carlo error of 200 x 200 draws), and not
    # far above it (the scores are not randomised, so a little conservatism is expected).
    assert coverage - 0.01 <= mean <= upper


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
