"""Prediction sets calibrated to a coverage: split-conformal prediction (randomised APS / RAPS).

A prediction set is the labels, most probable first, whose conformity score stays within a
quantile of the scores of held-out rows. If the held-out rows and a new row are
exchangeable, the set holds the true label with probability at least the stated coverage,
whatever the model (Romano et al. 2020, APS; Angelopoulos et al. 2021, RAPS), and, as the
scores are randomised, at most the coverage plus 1 / (n + 1) for n calibration rows. The
scores are computed once at training, from the *out-of-fold* predictions of the training
split (each row scored by models that never saw its fold), stored sorted in the bundle, and
the finite-sample quantile of each requested coverage is read from them at request time:
the test split is never used to calibrate.

Score of the label ranked r-th (1-based) by a row's probabilities p, sorted descending:
    S_r = p_(1) + ... + p_(r)  +  lam * max(0, r - k_reg)  +  MIN_RANK_STEP * r
    s_r = 0 for r = 1, else S_(r-1) + u * (S_r - S_(r-1))
`lam = 0` is APS; RAPS's penalty keeps sets small when the tail is flat. The top label
scores 0, so a set is never empty and the calibration counts that rule. `u` in [0, 1)
breaks ties: without it a sharp model's scores pile up (every label past the first few
holds almost no mass, so S_r ~ 1 for all of them; trees and neighbours repeat the same
probabilities), the quantiles of 80 %, 90 % and 95 % fall on the same pile, and coverage
stays flat and above the target. `u` is a pseudo-random number fixed by the row's
probabilities (`tie_breaks`), so a request gets the same set every time, and one row's sets
are nested across coverages.

What the guarantee does not cover:
* No non-empty set covers less than the top-1 accuracy: a target below it gets
  single-label sets whose coverage is that accuracy.
* Rows with identical probabilities share `u`; where a model gives a handful of distinct
  probability vectors (a one-hot classifier) the scores tie again and sets are conservative.
* The scores come from the fold models, the served model is refitted on all the training
  rows, and a refit sharper than its fold models covers less than stated. Kept as is rather
  than CV+ (every fold model in the bundle and run on every request) because the gap is
  within the test split's noise on the built-in data: the refit's test coverage was within
  0.02 of its fold models', in both directions. `modalfuse reliability` measures it.
A calibration saved before the scores were randomised (`randomised` false or absent) keeps
the rule its scores were computed with: S_r without `u`, the top label forced in.
Own code (numpy only), since the serving install carries no scikit-learn: MAPIE needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modalfuse.errors import InvalidInput

DEFAULT_COVERAGE = 0.9
# What a client may ask for: below 0.5 a "set" is mostly one label, above 0.99 the quantile
# rests on a handful of calibration rows.
MIN_COVERAGE, MAX_COVERAGE = 0.5, 0.99
# Probabilities are rounded to this many decimals before they fix a row's tie-break, so float
# noise in their last bits (batch against single scoring) seldom changes a set.
TIE_BREAK_DECIMALS = 6
# Each rank past the first adds at least this much to the randomised score, so labels of
# probability exactly 0 (trees, neighbours, a saturated softmax) still get a step for `u`
# to spread the tied scores over.
MIN_RANK_STEP = 1e-9


def conformity_scores(proba: np.ndarray, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """(n, n_labels) non-randomised score S of every label of every row: mass ranked at or
    above it, plus the RAPS rank penalty (the rule of calibrations saved before `randomised`)."""
    order = np.argsort(-proba, axis=1, kind="stable")
    sorted_p = np.take_along_axis(proba, order, axis=1)
    cum = np.cumsum(sorted_p, axis=1)
    ranks = np.arange(1, proba.shape[1] + 1)
    cum = cum + lam * np.maximum(0, ranks - k_reg)[None, :]
    scores = np.empty_like(cum)
    np.put_along_axis(scores, order, cum, axis=1)
    return scores


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a uint64 hash of uint64 values, wrapping around as it should."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def tie_breaks(proba: np.ndarray) -> np.ndarray:
    """A pseudo-random number in [0, 1) per row, fixed by the row's probabilities (a hash of
    them rounded to `TIE_BREAK_DECIMALS`): uniform over rows and unrelated to the label, yet
    the same for the same request. Each column is salted by its position and hashed, the
    column hashes are combined by XOR and hashed again: whole-array steps, so a one-row
    request pays microseconds, not a loop over its labels."""
    grid = np.rint(np.asarray(proba, dtype=np.float64) * 10.0**TIE_BREAK_DECIMALS).astype(np.uint64)
    salts = np.arange(1, grid.shape[1] + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
    h = _mix(np.bitwise_xor.reduce(_mix(grid ^ salts[None, :]), axis=1))
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def randomised_scores(proba: np.ndarray, lam: float = 0.0, k_reg: int = 0,
                      u: np.ndarray | None = None) -> np.ndarray:
    """(n, n_labels) randomised score of every label of every row (module docstring): 0 for
    the most probable label, else the score of the label ranked just above it plus `u` of the
    step to its own. `u` defaults to `tie_breaks(proba)`."""
    u = tie_breaks(proba) if u is None else np.asarray(u, dtype=np.float64)
    order = np.argsort(-proba, axis=1, kind="stable")
    sorted_p = np.take_along_axis(proba, order, axis=1)
    ranks = np.arange(1, proba.shape[1] + 1)
    upto = (np.cumsum(sorted_p, axis=1) + lam * np.maximum(0, ranks - k_reg)[None, :]
            + MIN_RANK_STEP * ranks[None, :])
    before = np.concatenate([np.zeros((len(proba), 1)), upto[:, :-1]], axis=1)
    ranked = before + u[:, None] * (upto - before)
    ranked[:, 0] = 0.0
    scores = np.empty_like(ranked)
    np.put_along_axis(scores, order, ranked, axis=1)
    return scores


def check_coverage(coverage: float) -> float:
    """The coverage a client asked for, or InvalidInput naming the allowed range."""
    if not (isinstance(coverage, int | float) and math.isfinite(coverage)
            and MIN_COVERAGE <= coverage <= MAX_COVERAGE):
        raise InvalidInput(f"coverage must be a number from {MIN_COVERAGE} to {MAX_COVERAGE}; "
                           f"got {coverage!r}")
    return float(coverage)


@dataclass
class Conformal:
    """Calibrated split-conformal sets: the sorted held-out scores, and the score's settings."""

    scores: np.ndarray  # sorted scores of the true labels of the calibration rows
    lam: float = 0.0
    k_reg: int = 0
    default_coverage: float = DEFAULT_COVERAGE
    source: str = "out-of-fold predictions of the training split"
    randomised: bool = True  # False: a calibration saved before the scores were randomised

    @property
    def method(self) -> str:
        """`aps`, or `raps` when a rank penalty is set."""
        return "raps" if self.lam > 0 else "aps"

    @classmethod
    def fit(cls, proba: np.ndarray, y: np.ndarray, lam: float = 0.0, k_reg: int = 0,
            default_coverage: float = DEFAULT_COVERAGE) -> Conformal:
        """Calibrate on held-out probabilities and their true label indices."""
        if len(y) == 0:
            raise InvalidInput("conformal calibration needs at least one held-out row")
        s = randomised_scores(proba, lam, k_reg)[np.arange(len(y)), y]
        return cls(np.sort(s), lam, k_reg, check_coverage(default_coverage))

    def quantile(self, coverage: float) -> float:
        """The score threshold for a coverage: the ceil((n + 1) * coverage)-th smallest
        calibration score (infinite, i.e. every label, when n is too small for it)."""
        n = len(self.scores)
        k = math.ceil((n + 1) * coverage)
        return float(self.scores[k - 1]) if k <= n else math.inf

    def label_scores(self, proba: np.ndarray) -> np.ndarray:
        """(n, n_labels) score of every label by this calibration's rule."""
        if self.randomised:
            return randomised_scores(proba, self.lam, self.k_reg)
        return conformity_scores(proba, self.lam, self.k_reg)

    def sets(self, proba: np.ndarray, coverage: float | None = None) -> np.ndarray:
        """(n, n_labels) boolean membership of each label in each row's set. The most
        probable label is always in (a set is never empty)."""
        q = self.quantile(self.default_coverage if coverage is None else check_coverage(coverage))
        # The legacy rule's slack absorbs float noise; continuous scores need none (a slack
        # would tie them again).
        slack = 0.0 if self.randomised else 1e-12
        member = self.label_scores(proba) <= q + slack
        member[np.arange(len(proba)), np.argmax(proba, axis=1)] = True
        return member

    def to_dict(self) -> dict:
        """The calibration as JSON-ready data (what the bundle stores)."""
        return {"method": self.method, "lam": self.lam, "k_reg": self.k_reg,
                "randomised": self.randomised,
                "default_coverage": self.default_coverage, "source": self.source,
                "n": len(self.scores), "scores": [float(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, d: dict) -> Conformal:
        """The calibration `to_dict` wrote; one saved before `randomised` existed keeps the
        non-randomised rule its scores were computed with."""
        return cls(np.asarray(d["scores"], dtype=np.float64), d["lam"], d["k_reg"],
                   d["default_coverage"], d.get("source", ""), bool(d.get("randomised", False)))


def wilson_interval(hits: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """The Wilson score interval of a proportion (z = 1.645: 90 %): how far an empirical
    coverage on n rows may sit from the true one by chance alone."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def set_report(member: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """Empirical coverage (with its 90 % Wilson interval), set sizes and per-class coverage of
    sets against true labels."""
    hit = member[np.arange(len(y)), y]
    sizes = member.sum(axis=1)
    per_class = {lab: (float(hit[y == j].mean()) if (y == j).any() else None)
                 for j, lab in enumerate(labels)}
    low, high = wilson_interval(int(hit.sum()), len(y))
    return {"rows": len(y), "coverage": float(hit.mean()), "coverage_interval": [low, high],
            "mean_size": float(sizes.mean()),
            "median_size": float(np.median(sizes)), "singleton_share": float((sizes == 1).mean()),
            "per_class_coverage": per_class}
