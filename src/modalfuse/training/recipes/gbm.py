"""`gbm`: LightGBM on the tabular features plus hand-made image statistics (concatenation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.folds import Excluded, FoldEngine


def suggest_lightgbm(trial: Any, base: TrainConfig, model: str, use_image_stats: bool) -> TrainConfig:
    """The LightGBM search space shared by the LightGBM recipes (rounds, rate, tree shape)."""
    return base.model_copy(update={
        "model": model, "use_image_stats": use_image_stats,
        "num_boost_round": trial.suggest_int("num_boost_round", 100, 500, step=50),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "gbm_params": {
            "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 3, 30, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        }})


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """LightGBM on tabular features (+ image statistics unless the config turns them off)."""
    return engine.lightgbm(excluded, use_image_stats=engine.cfg.use_image_stats)


def space(trial: Any, base: TrainConfig) -> TrainConfig:
    """Tune LightGBM with image statistics."""
    return suggest_lightgbm(trial, base, "gbm", use_image_stats=True)


register(Recipe("gbm", "LightGBM on tabular + hand-made image statistics (concatenation baseline)",
                fit, rank=1, uses_lightgbm=True, space=space))
