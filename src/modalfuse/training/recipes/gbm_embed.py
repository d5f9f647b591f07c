"""`gbm_embed`: LightGBM on the tabular features, image statistics and the CNN's embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalfuse.models.neural import EmbeddingGBMModel, OnnxNetModel
from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.folds import Excluded, FoldEngine


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """The `cnn` recipe's network, fitted on the same rows, feeds its embedding to LightGBM."""
    emb = engine.fit("cnn", excluded)
    assert isinstance(emb, OnnxNetModel)
    return EmbeddingGBMModel(emb, engine.lightgbm(excluded, use_image_stats=True, embedder=emb))


register(Recipe("gbm_embed", "LightGBM on tabular + image statistics + CNN embedding", fit, rank=5,
                uses_lightgbm=True, needs_torch=True))
