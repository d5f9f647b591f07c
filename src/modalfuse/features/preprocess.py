"""The fitted Preprocessor: parsed records + normalized images -> the arrays models consume.

Fitted on training rows only (vocabularies, medians, scales); image statistics are a
stateless function of the pixels. The same object is saved in the bundle and used by
the Predictor, so training and serving compute features with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from modalfuse.features.image import IMAGE_FEATURE_NAMES, image_features
from modalfuse.features.tabular import RecordColumns, TabularEncoder
from modalfuse.spec import DatasetSpec


@dataclass
class FeatureBatch:
    """Every representation a model may want, for the same rows in the same order."""

    tabular: np.ndarray  # one-hot + numerics, NaN where missing (tree models)
    tabular_dense: np.ndarray  # imputed and standardized (neural models)
    image_stats: np.ndarray  # hand-made colour/shape statistics
    images: np.ndarray  # (n, size, size, 4) uint8 RGBA, normalized

    def __len__(self) -> int:
        return len(self.tabular)

    def take(self, idx: np.ndarray) -> FeatureBatch:
        """The same representations for a subset of rows (a CV fold, a sample)."""
        return FeatureBatch(self.tabular[idx], self.tabular_dense[idx], self.image_stats[idx],
                            self.images[idx])


class Preprocessor:
    """The fitted step from parsed records and normalized images to a FeatureBatch.

    Fitted on training rows only, saved in the bundle (`preprocessor.json`) and used by the
    Predictor, so training and serving compute features with the same code.
    """

    def __init__(self, spec: DatasetSpec, exclude_fields: tuple[str, ...] = (),
                 min_count: int = 2):
        self.spec = spec
        self.exclude_fields = tuple(exclude_fields)
        self.min_count = min_count
        self.tabular_ = TabularEncoder(spec, exclude=self.exclude_fields, min_count=min_count)
        self.fitted_ = False

    def fit(self, frame: pd.DataFrame) -> Preprocessor:
        """Learn vocabularies, medians and scales from training rows; returns self."""
        self.tabular_.fit(frame)
        self.fitted_ = True
        return self

    @property
    def tabular_names(self) -> list[str]:
        """Names of the encoded tabular columns, in matrix order."""
        return list(self.tabular_.feature_names_ or [])

    @property
    def image_stat_names(self) -> list[str]:
        """Names of the image statistics columns, in matrix order."""
        return list(IMAGE_FEATURE_NAMES)

    def transform(self, frame: pd.DataFrame | RecordColumns, images: np.ndarray) -> FeatureBatch:
        """Every representation of the rows: raw and dense tabular matrices, image statistics, pixels."""
        stats = (np.stack([image_features(im) for im in images]) if len(images)
                 else np.zeros((0, len(IMAGE_FEATURE_NAMES))))
        raw, dense = self.tabular_.transform_both(frame)
        return FeatureBatch(
            tabular=raw.astype(np.float64),
            tabular_dense=dense.astype(np.float32),
            image_stats=stats.astype(np.float64),
            images=images,
        )

    def to_dict(self) -> dict:
        """The fitted state as JSON-ready data (what the bundle stores)."""
        return {"exclude_fields": list(self.exclude_fields), "min_count": self.min_count,
                "tabular": self.tabular_.to_dict()}

    @classmethod
    def from_dict(cls, spec: DatasetSpec, d: dict) -> Preprocessor:
        """A fitted Preprocessor rebuilt from `to_dict` output and its spec."""
        p = cls(spec, tuple(d["exclude_fields"]), d["min_count"])
        p.tabular_ = TabularEncoder.from_dict(spec, d["tabular"])
        p.fitted_ = True
        return p
