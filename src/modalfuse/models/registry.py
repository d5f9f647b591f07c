"""The registry of served model kinds: the bundle loads a model by its kind's name.

How to add a served kind: write one module in this package with a class that has `kind`,
`predict_proba(FeatureBatch)`, `save(dir) -> meta` and `load(dir, meta)`, and decorate it
with `@register(libraries=(...))`, naming the libraries whose version changes what its
saved files mean (the bundle records them and checks them at load). `load_kinds` imports
every module of the package once, so nothing else needs editing; the bundle and the
Predictor never special-case a kind. A kind module imports no torch at module top: the
serving install has none. A module that needs a library this install lacks is skipped, and
`load_model` names it when asked for a kind it does not know. A composite kind (a pool, a
calibrated model) stores each part in its own sub-folder with `save_part` and reads it back
with `load_part`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

import numpy as np

from modalfuse.errors import InvalidInput
from modalfuse.features.preprocess import FeatureBatch

MODEL_KINDS: dict[str, type[Model]] = {}
# Libraries whose version changes what a saved model of the kind means, per kind.
KIND_LIBRARIES: dict[str, tuple[str, ...]] = {}
# Kind modules that could not be imported for want of a library: module -> the error.
UNAVAILABLE_MODULES: dict[str, str] = {}
# Modules of this package that hold no kind: the registry itself and torch-free settings.
NOT_KIND_MODULES = frozenset({"registry", "netconfig"})

M = TypeVar("M", bound=type)


class Model(Protocol):
    """What every served model kind provides: probabilities, and saving to / loading from a folder."""

    kind: ClassVar[str]

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """(n, n_labels) class probabilities for the batch's rows."""
        ...

    def save(self, directory: Path) -> dict:
        """Write the model's files into `directory`; return the meta `load` reads back."""
        ...

    @classmethod
    def load(cls, directory: Path, meta: dict) -> Model:
        """The model `save` wrote into `directory`, with the meta it returned."""
        ...


def register(*, libraries: Iterable[str] = ()) -> Callable[[M], M]:
    """Class decorator that makes a model kind loadable by name; `libraries` are the ones
    its saved files depend on (recorded in bundle.json, checked when a bundle loads)."""
    needed = tuple(libraries)

    def add(cls: M) -> M:
        MODEL_KINDS[cls.kind] = cls  # type: ignore[attr-defined]
        KIND_LIBRARIES[cls.kind] = needed  # type: ignore[attr-defined]
        return cls

    return add


@cache
def load_kinds() -> dict[str, type[Model]]:
    """Import every kind module of this package (once), so that every served kind is registered."""
    package = importlib.import_module(__package__ or "modalfuse.models")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("_") or module.name in NOT_KIND_MODULES:
            continue
        name = f"{package.__name__}.{module.name}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if (e.name or "").startswith("modalfuse"):
                raise  # a broken import inside the project is a bug, not a missing extra
            UNAVAILABLE_MODULES[name] = str(e)
    return MODEL_KINDS


def kind_libraries(kinds: Iterable[str] | None = None) -> list[str]:
    """The libraries the given kinds need (all registered kinds by default), sorted; unknown
    kinds need none."""
    registered = load_kinds()
    chosen = registered if kinds is None else kinds
    return sorted({lib for k in chosen for lib in KIND_LIBRARIES.get(k, ())})


def load_model(directory: Path, meta: dict) -> Model:
    """The model of kind `meta["kind"]` saved in `directory` (its `load`)."""
    kinds = load_kinds()
    kind = meta["kind"]
    if kind not in kinds:
        missing = "".join(f"; {m} was skipped: {err}" for m, err in UNAVAILABLE_MODULES.items())
        raise InvalidInput(f"unknown model kind {kind!r}; known: {sorted(kinds)}{missing}")
    return kinds[kind].load(directory, meta)


def save_part(model: Model, directory: Path, name: str) -> dict:
    """Save one part of a composite kind into the sub-folder `name` of `directory`; returns
    its meta with the name and folder, for the composite's `parts`."""
    sub = directory / name
    sub.mkdir(parents=True, exist_ok=True)
    return {"name": name, "dir": name, **model.save(sub)}


def load_part(directory: Path, meta: dict) -> Model:
    """The part `save_part` wrote, loaded through the kind registry."""
    return load_model(directory / meta["dir"], meta)
