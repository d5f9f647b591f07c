"""The recipe registry: a recipe is a named way to fit a model on some training rows.

Every module of this package registers its recipe when it is imported; `get` and `names`
import them all first, so adding a recipe is adding one file. A test (or a user's own code)
may `register` a recipe from anywhere before training it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modalfuse.errors import InvalidInput
from modalfuse.spec import DatasetWords

if TYPE_CHECKING:
    from modalfuse.models.registry import Model
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.folds import Excluded, FoldEngine

FitFn = Callable[["FoldEngine", "Excluded"], "Model"]
SpaceFn = Callable[[Any, "TrainConfig"], "TrainConfig"]


@dataclass(frozen=True)
class Recipe:
    """How to fit one model: `fit(engine, excluded)` returns a model fitted on the training
    rows outside the excluded CV folds (by the engine, which owns rows, features and seeds).

    `help` may name the dataset's things as `{image}` and `{record}` (one image, one
    record); `describe` fills them in with the dataset's words.
    """

    name: str
    help: str
    fit: FitFn
    rank: int = 100  # listing order (the ablation table's row order)
    uses_lightgbm: bool = False  # fits LightGBM, so `TrainConfig.gbm_params` reach it
    needs_torch: bool = False  # trains a network (the `train` extra)
    space: SpaceFn | None = None  # the tunable space: (optuna trial, base config) -> config

    def describe(self, words: DatasetWords | None = None) -> str:
        """The recipe's one-line description in a dataset's words (neutral ones by default)."""
        w = words or DatasetWords()
        return self.help.replace("{image}", w.image_noun).replace("{record}", w.record_noun)


RECIPES: dict[str, Recipe] = {}
_loaded = False


def register(recipe: Recipe) -> Recipe:
    """Add (or replace) a recipe under its name."""
    RECIPES[recipe.name] = recipe
    return recipe


def load_recipes() -> dict[str, Recipe]:
    """Import every recipe module of this package once; return the registry."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return RECIPES


def names() -> tuple[str, ...]:
    """Every recipe name, in listing order."""
    recipes = load_recipes()
    return tuple(sorted(recipes, key=lambda n: (recipes[n].rank, n)))


def get(name: str) -> Recipe:
    """The recipe called `name`, or an error listing the ones there are."""
    recipes = load_recipes()
    if name not in recipes:
        raise InvalidInput(f"unknown model {name!r}; available: {list(names())}")
    return recipes[name]


def tunable() -> tuple[str, ...]:
    """Recipes with a tunable space (the families `modalfuse tune` may search)."""
    return tuple(n for n in names() if get(n).space is not None)
