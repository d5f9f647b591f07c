"""Calibration of served probabilities: temperature scaling and the `calibrated` kind that
wraps any model with its fitted temperature, with the softmax and clipped log-probabilities
the pools share. Numpy only (scipy for the fit), so every served model, with a network or
without, is calibrated here.

The temperature is fitted on held-out (out-of-fold) predictions by `training/folds.py`, and
`training/train.py` saves a `calibrated` model around the recipe's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from modalfuse.features.preprocess import FeatureBatch
from modalfuse.models.registry import Model, load_part, register, save_part


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits, shifted for numerical stability."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_proba(p: np.ndarray) -> np.ndarray:
    """Log-probabilities, clipped so a zero probability stays finite."""
    # Clip so a part that is certain (p = 0 for a class) cannot veto it with -inf.
    return np.log(np.clip(p, 1e-7, 1.0))


@register()
class CalibratedModel:
    """Temperature scaling of any model's probabilities; T is fitted on held-out (out-of-fold) rows."""

    kind: ClassVar[str] = "calibrated"

    def __init__(self, inner: Model, temperature: float = 1.0):
        self.inner = inner
        self.temperature = temperature

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """The inner model's probabilities, tempered."""
        return apply_temperature(self.inner.predict_proba(batch), self.temperature)

    def save(self, directory: Path) -> dict:
        """Write the inner model into its sub-folder; return it with the temperature."""
        return {"kind": self.kind, "temperature": self.temperature,
                "parts": [save_part(self.inner, directory, "inner")]}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> CalibratedModel:
        """The calibrated model `save` wrote, its inner model loaded through the kind registry."""
        return cls(load_part(directory, meta["parts"][0]), meta["temperature"])


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled by a temperature (> 1 softens, < 1 sharpens)."""
    return softmax(log_proba(p) / temperature)


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the log loss of held-out probabilities (a 1-D search)."""
    from scipy.optimize import minimize_scalar

    logs = log_proba(p)
    n = len(y)

    def nll(log_t: float) -> float:
        q = softmax(logs / np.exp(log_t))
        return float(-np.mean(np.log(np.clip(q[np.arange(n), y], 1e-12, 1))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))
