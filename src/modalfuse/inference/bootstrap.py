"""The paired bootstrap of the macro-F1 gain of one model over another on the same rows: how
sure a gain is, without touching the test split.

Both models are scored on the same resampled rows, so what the rows have in common cancels
out. Given the rows' CV folds, rows are drawn within each fold (each fold keeps its size),
which respects the fold structure out-of-fold predictions came from. The ablation
(`training.ablation`, within folds) and the promotion gate (`tracking.gate`, over all rows)
both call `paired_bootstrap_gain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modalfuse.errors import InvalidInput

# Resamples scored at a time: bounds memory to CHUNK × rows counts.
CHUNK = 250


@dataclass(frozen=True)
class BootstrapGain:
    """Macro-F1 of a model and of the base it is compared with on the same rows, the observed
    gain (model − base), the mean gain over the resamples and its central interval."""

    model_f1: float
    base_f1: float
    gain: float
    mean: float
    low: float
    high: float
    confidence: float
    resamples: int
    rows: int
    within_folds: bool
    p_not_better: float  # share of resamples where the model does not beat the base


def macro_f1_weighted(y: np.ndarray, pred: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 for each row of `weights` (B × n resampling counts), over the classes present
    in the resample's truth or predictions (as `evaluate.classification_metrics` does)."""
    true_1h = np.eye(n_classes)[y]
    pred_1h = np.eye(n_classes)[pred]
    tp = weights @ (true_1h * pred_1h)
    fp = weights @ ((1 - true_1h) * pred_1h)
    fn = weights @ (true_1h * (1 - pred_1h))
    denom = 2 * tp + fp + fn
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def resample_counts(n: int, b: int, rng: np.random.Generator,
                    folds: np.ndarray | None = None) -> np.ndarray:
    """(b, n) bootstrap counts of n rows; with `folds`, rows are drawn within each fold."""
    weights = np.zeros((b, n))
    groups = [np.arange(n)] if folds is None else [np.flatnonzero(folds == f)
                                                  for f in np.unique(folds)]
    for members in groups:
        idx = members[rng.integers(0, len(members), size=(b, len(members)))]
        np.add.at(weights, (np.repeat(np.arange(b), len(members)), idx.ravel()), 1.0)
    return weights


def paired_bootstrap_gain(y: np.ndarray, proba_model: np.ndarray, proba_base: np.ndarray,
                          labels: Sequence[str], resamples: int = 2000, confidence: float = 0.90,
                          seed: int = 0, folds: np.ndarray | None = None) -> BootstrapGain:
    """Macro-F1 of `proba_model` minus that of `proba_base` on rows `y` (label indices into
    `labels`), resampled `resamples` times (within each fold when `folds` is given)."""
    y = np.asarray(y, dtype=int)
    if proba_model.shape != proba_base.shape or proba_model.shape != (len(y), len(labels)):
        raise InvalidInput(f"probabilities must both be (rows, labels) = ({len(y)}, {len(labels)}); "
                           f"got {proba_model.shape} and {proba_base.shape}")
    if not 0 < confidence < 1:
        raise InvalidInput(f"confidence must lie in (0, 1); got {confidence}")
    n, k = len(y), len(labels)
    pred_model, pred_base = proba_model.argmax(axis=1), proba_base.argmax(axis=1)
    rng = np.random.default_rng(seed)
    gains = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        b = min(CHUNK, resamples - start)
        w = resample_counts(n, b, rng, folds)
        gains[start:start + b] = (macro_f1_weighted(y, pred_model, w, k)
                                  - macro_f1_weighted(y, pred_base, w, k))
    ones = np.ones((1, n))
    model_f1 = float(macro_f1_weighted(y, pred_model, ones, k)[0])
    base_f1 = float(macro_f1_weighted(y, pred_base, ones, k)[0])
    tail = (1 - confidence) / 2
    low, high = np.quantile(gains, [tail, 1 - tail])
    return BootstrapGain(model_f1, base_f1, model_f1 - base_f1, float(gains.mean()), float(low),
                         float(high), confidence, resamples, n, folds is not None,
                         float(np.mean(gains <= 0)))
