"""Prediction sets calibrated to a coverage: split-conformal prediction (APS / RAPS).

A prediction set is the smallest group of labels, most probable first, whose conformity
score stays within a quantile of the scores of held-out rows. If the held-out rows and a
new row are exchangeable, the set holds the true label with probability at least the
stated coverage, whatever the model (Romano et al. 2020, APS; Angelopoulos et al. 2021,
RAPS). The scores are computed once at training, from the *out-of-fold* predictions of the
training split (each row scored by models that never saw its fold), stored sorted in the
bundle, and the quantile for any coverage is read from them at request time: the test
split is never used to calibrate. The guarantee holds for the fold models those scores
come from; the served model is refitted on all the training rows, and where it is sharper
than its fold models its sets cover less than stated (docs/trust.md; `modalfuse
reliability` measures it).

Score of label y for probabilities p (sorted descending, y at rank r, 1-based):
    s(p, y) = sum of the probabilities ranked above y  +  p_y  +  lam * max(0, r - k_reg)
`lam = 0` is APS; RAPS's penalty keeps sets small when the tail is flat. The scores are not
randomised, so the sets are conservative (coverage at least, not exactly, the target).
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


def conformity_scores(proba: np.ndarray, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """(n, n_labels) score of every label of every row: mass ranked at or above it, plus the
    RAPS rank penalty; a label's set membership is `score <= quantile`."""
    order = np.argsort(-proba, axis=1, kind="stable")
    sorted_p = np.take_along_axis(proba, order, axis=1)
    cum = np.cumsum(sorted_p, axis=1)
    ranks = np.arange(1, proba.shape[1] + 1)
    cum = cum + lam * np.maximum(0, ranks - k_reg)[None, :]
    scores = np.empty_like(cum)
    np.put_along_axis(scores, order, cum, axis=1)
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
        s = conformity_scores(proba, lam, k_reg)[np.arange(len(y)), y]
        return cls(np.sort(s), lam, k_reg, check_coverage(default_coverage))

    def quantile(self, coverage: float) -> float:
        """The score threshold for a coverage: the ceil((n + 1) * coverage)-th smallest
        calibration score (infinite, i.e. every label, when n is too small for it)."""
        n = len(self.scores)
        k = math.ceil((n + 1) * coverage)
        return float(self.scores[k - 1]) if k <= n else math.inf

    def sets(self, proba: np.ndarray, coverage: float | None = None) -> np.ndarray:
        """(n, n_labels) boolean membership of each label in each row's set. The most
        probable label is always in (a set is never empty)."""
        q = self.quantile(self.default_coverage if coverage is None else check_coverage(coverage))
        member = conformity_scores(proba, self.lam, self.k_reg) <= q + 1e-12
        member[np.arange(len(proba)), np.argmax(proba, axis=1)] = True
        return member

    def to_dict(self) -> dict:
        """The calibration as JSON-ready data (what the bundle stores)."""
        return {"method": self.method, "lam": self.lam, "k_reg": self.k_reg,
                "default_coverage": self.default_coverage, "source": self.source,
                "n": len(self.scores), "scores": [float(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, d: dict) -> Conformal:
        """The calibration `to_dict` wrote."""
        return cls(np.asarray(d["scores"], dtype=np.float64), d["lam"], d["k_reg"],
                   d["default_coverage"], d.get("source", ""))


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
