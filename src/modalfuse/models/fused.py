"""Served kinds for late fusion of unlike models: a linear softmax model on the table and the
image statistics, and a fixed-weight geometric pool of any parts. Numpy only, no torch.

Trees and a linear model err differently on this data: the trees split on a few strong
columns, while the linear model adds up many weak ones (rare abilities, egg groups, colour
statistics of the sprite). Their pooled probabilities beat either alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from modalfuse.errors import InvalidInput, NotFitted
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.models.calibration import log_proba, softmax
from modalfuse.models.registry import Model, load_part, register, save_part

LINEAR_FILE = "linear.npz"


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-row weights n / (k · count of the row's class), so every class weighs the same."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return (len(y) / (n_classes * np.maximum(counts, 1)))[y]


@register()
class LinearSoftmaxModel:
    """Multinomial logistic regression (L2, class-balanced) on the standardized tabular
    features plus the image statistics, standardized with the training rows' mean and spread."""

    kind: ClassVar[str] = "linear_softmax"

    def __init__(self, c: float = 0.3, use_image_stats: bool = True,
                 class_weight: str | None = "balanced", max_iter: int = 3000):
        if c <= 0:
            raise InvalidInput(f"c (the inverse L2 strength) must be > 0; got {c}")
        if class_weight not in (None, "balanced"):
            raise InvalidInput(f"unknown class_weight {class_weight!r}; choose None or 'balanced'")
        self.c = c
        self.use_image_stats = use_image_stats
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.image_mean_: np.ndarray | None = None
        self.image_scale_: np.ndarray | None = None

    def inputs(self, batch: FeatureBatch) -> np.ndarray:
        """The design matrix: the preprocessor's dense tabular block (+ standardized image statistics)."""
        x = np.asarray(batch.tabular_dense, dtype=np.float64)
        if not self.use_image_stats:
            return x
        if self.image_mean_ is None or self.image_scale_ is None:
            raise NotFitted("LinearSoftmaxModel is not fitted; call fit() first")
        return np.hstack([x, (batch.image_stats - self.image_mean_) / self.image_scale_])

    def fit(self, batch: FeatureBatch, y: np.ndarray, n_classes: int) -> LinearSoftmaxModel:
        """Minimise the weighted log loss + ||W||² / (2c) by L-BFGS (intercepts unpenalised); returns self."""
        from scipy.optimize import minimize

        if self.use_image_stats:
            stats = np.asarray(batch.image_stats, dtype=np.float64)
            self.image_mean_ = stats.mean(axis=0)
            # A constant statistic keeps scale 1, so it stays 0 rather than dividing by 0.
            sd = stats.std(axis=0)
            self.image_scale_ = np.where(sd > 1e-9, sd, 1.0)
        x = self.inputs(batch)
        n, d = x.shape
        k = n_classes
        w = balanced_weights(y, k) if self.class_weight == "balanced" else np.ones(n)
        onehot = np.eye(k)[y]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            coef, bias = theta[:d * k].reshape(d, k), theta[d * k:]
            p = softmax(x @ coef + bias)
            nll = -float(np.sum(w * np.log(np.clip(p[np.arange(n), y], 1e-300, 1.0))))
            g = (p - onehot) * w[:, None]
            grad = np.concatenate([(x.T @ g + coef / self.c).ravel(), g.sum(axis=0)])
            return nll + 0.5 * float(np.sum(coef * coef)) / self.c, grad

        res = minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter})
        self.coef_, self.intercept_ = res.x[:d * k].reshape(d, k), res.x[d * k:]
        return self

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """(n, n_classes) probabilities; NotFitted before `fit`."""
        if self.coef_ is None or self.intercept_ is None:
            raise NotFitted("LinearSoftmaxModel is not fitted; call fit() first")
        return softmax(self.inputs(batch) @ self.coef_ + self.intercept_)

    def save(self, directory: Path) -> dict:
        """Write the coefficients and the image standardization; return the meta `load` reads."""
        if self.coef_ is None or self.intercept_ is None:
            raise NotFitted("LinearSoftmaxModel is not fitted; call fit() first")
        none = np.zeros(0)  # a model without image statistics stores empty standardization
        np.savez(directory / LINEAR_FILE, coef=self.coef_, intercept=self.intercept_,
                 image_mean=none if self.image_mean_ is None else self.image_mean_,
                 image_scale=none if self.image_scale_ is None else self.image_scale_)
        return {"kind": self.kind, "file": LINEAR_FILE, "c": self.c,
                "use_image_stats": self.use_image_stats, "class_weight": self.class_weight,
                "max_iter": self.max_iter}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> LinearSoftmaxModel:
        """The model `save` wrote into `directory`."""
        m = cls(meta["c"], meta["use_image_stats"], meta["class_weight"], meta["max_iter"])
        with np.load(directory / meta["file"]) as arrays:
            m.coef_, m.intercept_ = arrays["coef"], arrays["intercept"]
            if m.use_image_stats:
                m.image_mean_, m.image_scale_ = arrays["image_mean"], arrays["image_scale"]
        return m


@register()
class GeometricPoolModel:
    """Late fusion with fixed weights: softmax(Σ_m w_m log p_m), a weighted geometric mean.

    Nothing in it is learned from labels, so it needs no out-of-fold meta-fit: its parts are
    fitted on the training rows and the weights are settings.
    """

    kind: ClassVar[str] = "geometric_pool"

    def __init__(self, parts: dict[str, Model], weights: list[float] | None = None):
        if not parts:
            raise InvalidInput("a geometric pool needs at least one part")
        self.parts = dict(parts)
        self.weights = list(weights) if weights is not None else [1 / len(parts)] * len(parts)
        if len(self.weights) != len(self.parts):
            raise InvalidInput(f"{len(self.weights)} weights for {len(self.parts)} parts "
                               f"{list(self.parts)}")

    def combine(self, part_probas: list[np.ndarray]) -> np.ndarray:
        """The pooled probabilities from the parts' probabilities (in `parts` order)."""
        z = sum(w * log_proba(p) for w, p in zip(self.weights, part_probas, strict=True))
        return softmax(np.asarray(z))

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """Pool the parts' probabilities for a batch."""
        return self.combine([part.predict_proba(batch) for part in self.parts.values()])

    def save(self, directory: Path) -> dict:
        """Write each part into its own sub-folder; return the weights and the parts' meta."""
        parts = [save_part(model, directory, name) for name, model in self.parts.items()]
        return {"kind": self.kind, "parts": parts, "weights": self.weights}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> GeometricPoolModel:
        """The pool `save` wrote, its parts loaded through the kind registry."""
        parts = {p["name"]: load_part(directory, p) for p in meta["parts"]}
        return cls(parts, meta["weights"])
