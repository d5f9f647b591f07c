"""`gbm_tabular`: the table alone, LightGBM on the record's features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modalfuse.training.recipes import Recipe, register
from modalfuse.training.recipes.gbm import suggest_lightgbm

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.folds import Excluded, FoldEngine


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """LightGBM on the tabular features only."""
    return engine.lightgbm(excluded, use_image_stats=False)


def space(trial: Any, base: TrainConfig) -> TrainConfig:
    """Tune LightGBM without image statistics."""
    return suggest_lightgbm(trial, base, "gbm_tabular", use_image_stats=False)


register(Recipe("gbm_tabular", "tabular only: LightGBM on the {record}", fit, rank=0,
                uses_lightgbm=True, space=space))
