"""`linear`: a class-balanced multinomial logistic regression on the tabular features and the
image statistics (numpy; no trees), the part `gbm_linear` pools with the trees."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalfuse.models.fused import LinearSoftmaxModel
from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.folds import Excluded, FoldEngine

# Inverse L2 strength, chosen by grouped CV on the training split among 0.03, 0.1, 0.3 and 1
# (the pool with `gbm` scored within a point of macro-F1 at every one of them).
C = 0.3


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """The linear model on the standardized table + image statistics of the rows outside `excluded`."""
    rows = engine.rows(excluded)
    model = LinearSoftmaxModel(c=C, use_image_stats=engine.cfg.use_image_stats,
                               class_weight=engine.cfg.class_weight)
    return model.fit(engine.batch(excluded, rows), engine.raw.y[rows], engine.n_classes)


register(Recipe("linear", "linear softmax (logistic regression) on tabular + image statistics", fit,
                rank=6))
