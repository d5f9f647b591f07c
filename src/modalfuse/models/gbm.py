"""Gradient-boosted trees (LightGBM) on tabular features, optionally with image statistics."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightgbm as lgb
import numpy as np

from modalfuse.features.preprocess import FeatureBatch
from modalfuse.features.tabular import NotFittedError
from modalfuse.models.registry import register

DEFAULT_PARAMS = {
    "objective": "multiclass",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 5,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
    # One thread: on 517 rows a second thread gains little, and OpenMP spin-waits turn
    # into a large slowdown whenever the cores are shared (CI, a busy laptop).
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
}


def gbm_inputs(batch: FeatureBatch, use_image_stats: bool, use_tabular: bool = True) -> np.ndarray:
    """The matrix LightGBM reads: the raw tabular columns and/or the image statistics."""
    if not use_tabular:
        return batch.image_stats
    if use_image_stats:
        return np.hstack([batch.tabular, batch.image_stats])
    return batch.tabular


@register(libraries=("lightgbm",))
class GBMModel:
    """The `lightgbm` served kind: gradient-boosted trees on tabular features (and image statistics)."""

    kind: ClassVar[str] = "lightgbm"

    def __init__(self, use_image_stats: bool = True, num_boost_round: int = 300,
                 params: dict | None = None, seed: int = 0, class_weight: str | None = "balanced",
                 use_tabular: bool = True):
        self.use_image_stats = use_image_stats
        self.use_tabular = use_tabular  # False: the image statistics alone (image-only model)
        self.num_boost_round = num_boost_round
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.seed = seed
        self.class_weight = class_weight
        self.booster_: lgb.Booster | None = None

    def fit(self, batch: FeatureBatch, y: np.ndarray, n_classes: int,
            feature_names: list[str] | None = None) -> GBMModel:
        """Train the booster on a batch and integer labels, class-balanced by default; returns self."""
        x = gbm_inputs(batch, self.use_image_stats, self.use_tabular)
        weight = None
        if self.class_weight == "balanced":
            counts = np.bincount(y, minlength=n_classes).astype(float)
            weight = (len(y) / (n_classes * np.maximum(counts, 1)))[y]
        params = {**self.params, "num_class": n_classes, "seed": self.seed}
        ds = lgb.Dataset(x, y, weight=weight, feature_name=feature_names or "auto",
                         free_raw_data=True)
        self.booster_ = lgb.train(params, ds, num_boost_round=self.num_boost_round)
        return self

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """(n, n_classes) probabilities; NotFittedError before `fit`."""
        if self.booster_ is None:
            raise NotFittedError("GBMModel is not fitted; call fit() first")
        x = gbm_inputs(batch, self.use_image_stats, self.use_tabular)
        return np.asarray(self.booster_.predict(x, num_threads=1), dtype=np.float64)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per input column, by column name."""
        assert self.booster_ is not None
        gains = self.booster_.feature_importance("gain")
        return dict(zip(self.booster_.feature_name(), gains.tolist(), strict=True))

    def save(self, directory: Path) -> dict:
        """Write the booster as LightGBM's text model; return the meta `load` reads."""
        assert self.booster_ is not None
        (directory / "model.lgb.txt").write_text(self.booster_.model_to_string())
        return {"kind": self.kind, "file": "model.lgb.txt", "use_image_stats": self.use_image_stats,
                "num_boost_round": self.num_boost_round, "params": self.params,
                "class_weight": self.class_weight,
                **({} if self.use_tabular else {"use_tabular": False})}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> GBMModel:
        """The model `save` wrote into `directory`."""
        m = cls(use_image_stats=meta["use_image_stats"], num_boost_round=meta["num_boost_round"],
                params=meta["params"], class_weight=meta.get("class_weight"),
                use_tabular=meta.get("use_tabular", True))
        m.booster_ = lgb.Booster(model_str=(directory / meta["file"]).read_text())
        return m
