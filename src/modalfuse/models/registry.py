"""What every model kind provides, and the registry the bundle uses to load one by name.

A model kind is a class with `kind`, `predict_proba(FeatureBatch)`, `save(dir) -> meta`
and `load(dir, meta)`. New kinds (CNN, fusion) register themselves; the bundle and the
Predictor never special-case them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from modalfuse.features.preprocess import FeatureBatch

MODEL_KINDS: dict[str, type[Model]] = {}


class Model(Protocol):
    kind: ClassVar[str]

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray: ...

    def save(self, directory: Path) -> dict: ...

    @classmethod
    def load(cls, directory: Path, meta: dict) -> Model: ...


def register(cls):
    MODEL_KINDS[cls.kind] = cls
    return cls


def load_model(directory: Path, meta: dict) -> Model:
    kind = meta["kind"]
    if kind not in MODEL_KINDS:
        # Kinds register on import; import the known modules before giving up.
        import modalfuse.models.gbm
        import modalfuse.models.neural  # noqa: F401

    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind].load(directory, meta)
