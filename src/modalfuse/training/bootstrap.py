"""A paired bootstrap of the macro-F1 gain of one model over another on the same out-of-fold
rows: how sure a CV gain is, without touching the test split.

Both models are scored on the same resampled rows, so what the rows have in common cancels
out. Resampling may be stratified by CV fold (each fold keeps its size), which respects the
fold structure the predictions came from. The per-resample macro-F1 is
`inference.oof.macro_f1_weighted`, the one the promotion gate uses.
"""

from __future__ import annotations

import numpy as np

from modalfuse.errors import InvalidInput
from modalfuse.inference.oof import macro_f1_weighted

# Resamples scored at a time: bounds memory to CHUNK × rows counts.
CHUNK = 250


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
                          labels: list[str], n_boot: int = 2000, level: float = 0.9,
                          seed: int = 0, folds: np.ndarray | None = None) -> dict:
    """Macro-F1 of `proba_model` minus that of `proba_base` on rows `y` (label indices into
    `labels`): the observed gain, the bootstrap mean and the central `level` interval."""
    y = np.asarray(y, dtype=int)
    if proba_model.shape != proba_base.shape or proba_model.shape != (len(y), len(labels)):
        raise InvalidInput(f"probabilities must both be (rows, labels) = ({len(y)}, {len(labels)}); "
                           f"got {proba_model.shape} and {proba_base.shape}")
    if not 0 < level < 1:
        raise InvalidInput(f"level must lie in (0, 1); got {level}")
    n, k = len(y), len(labels)
    pred_model, pred_base = proba_model.argmax(axis=1), proba_base.argmax(axis=1)
    rng = np.random.default_rng(seed)
    gains = np.empty(n_boot)
    for start in range(0, n_boot, CHUNK):
        b = min(CHUNK, n_boot - start)
        w = resample_counts(n, b, rng, folds)
        gains[start:start + b] = (macro_f1_weighted(y, pred_model, w, k)
                                  - macro_f1_weighted(y, pred_base, w, k))
    ones = np.ones((1, n))
    model_f1 = float(macro_f1_weighted(y, pred_model, ones, k)[0])
    base_f1 = float(macro_f1_weighted(y, pred_base, ones, k)[0])
    tail = (1 - level) / 2
    low, high = np.quantile(gains, [tail, 1 - tail])
    return {"model_macro_f1": model_f1, "base_macro_f1": base_f1, "gain": model_f1 - base_f1,
            "gain_mean": float(gains.mean()), "low": float(low), "high": float(high),
            "level": level, "n_boot": n_boot, "rows": n,
            "p_not_better": float(np.mean(gains <= 0))}
