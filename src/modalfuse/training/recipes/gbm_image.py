"""`gbm_image`: the image alone, LightGBM on the hand-made image statistics (torch-free); it
also serves image-only requests of every bundle (`training/companions.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.folds import Excluded, FoldEngine


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """LightGBM on the image statistics only (no field of the table)."""
    return engine.lightgbm(excluded, use_image_stats=True, use_tabular=False)


register(Recipe("gbm_image", "image only: LightGBM on hand-made image statistics", fit, rank=2,
                uses_lightgbm=True))
