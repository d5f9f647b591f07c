"""`intermediate`: intermediate fusion, a CNN embedding joined with a tabular MLP in one network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modalfuse.training.recipes import Recipe, register

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.folds import Excluded, FoldEngine


def fit(engine: FoldEngine, excluded: Excluded) -> Model:
    """The fusion network (image branch ⊕ tabular branch -> shared head)."""
    return engine.network(excluded, with_tabular=True)


def space(trial: Any, base: TrainConfig) -> TrainConfig:
    """Tune the network's learning rate, width, dropout and epochs."""
    net = base.net.model_copy(update={
        "lr": trial.suggest_float("net_lr", 1e-3, 1e-2, log=True),
        "width": trial.suggest_categorical("net_width", [8, 16]),
        "dropout": trial.suggest_float("net_dropout", 0.0, 0.5),
        "epochs": trial.suggest_int("net_epochs", max(1, base.net.epochs // 2), base.net.epochs),
    })
    return base.model_copy(update={"model": "intermediate", "net": net})


register(Recipe("intermediate", "intermediate fusion: CNN embedding ⊕ tabular MLP -> shared head",
                fit, rank=4, needs_torch=True, space=space))
