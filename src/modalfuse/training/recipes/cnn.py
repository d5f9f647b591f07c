"""`cnn`: the image alone, a CNN trained from scratch and exported to ONNX."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.folds import Excluded, FoldEngine


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """The image network, fitted on the images (and extra views) of the rows outside `excluded`."""
    return engine.network(excluded, with_tabular=False)


register(Recipe("cnn", "image only: {image} CNN trained from scratch", fit, rank=2, needs_torch=True))
