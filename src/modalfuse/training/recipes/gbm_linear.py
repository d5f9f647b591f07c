"""`gbm_linear`: late fusion of unlike learners, the equal-weight geometric mean of `gbm`
(trees on table + image statistics) and `linear` (a logistic regression on the same inputs).

The weights are fixed, not learned: an out-of-fold log-linear pool of the same two parts
learned weights of about one half each and scored no better under grouped CV, so there is no
meta-learner to fit and nothing that could see a held-out fold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalfuse.models.fused import GeometricPoolModel
from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.folds import Excluded, FoldEngine

PARTS = ("gbm", "linear")


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """Each part fitted on the rows outside `excluded` (memoised by the engine), pooled equally."""
    return GeometricPoolModel({part: engine.fit(part, excluded) for part in PARTS})


register(Recipe("gbm_linear", "late fusion: geometric mean of gbm (trees) and linear (logistic "
                "regression), both on tabular + image statistics", fit, rank=7, uses_lightgbm=True))
