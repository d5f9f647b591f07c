"""`stacking`: late fusion, a log-linear pool of three models learned from their out-of-fold
predictions (the meta-learner never sees a prediction made on a row its part trained on)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalfuse.models.neural import StackingModel
from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.folds import Excluded, FoldEngine

# Two GBMs (with and without image statistics) disagree usefully; the CNN adds the image.
PARTS = ("gbm", "gbm_tabular", "cnn")


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """Fit each part on the rows outside `excluded`, and the pool on the parts' held-out output."""
    rows = engine.rows(excluded)
    oof = [engine.heldout(part, excluded)[1] for part in PARTS]
    model = StackingModel({part: engine.fit(part, excluded) for part in PARTS}, l2=10.0,
                          balanced=False)
    return model.fit_meta(oof, engine.raw.y[rows])


register(Recipe("stacking", "late fusion: log-linear pool of gbm, gbm_tabular and cnn, fitted out "
                "of fold", fit, rank=3, uses_lightgbm=True, needs_torch=True))
