"""Out-of-fold predictions: what a model said about each training row while that row's fold
was held out, saved in the bundle, and the check that two of them can be compared row by row
(`inference.bootstrap.paired_bootstrap_gain` then compares them).

Two bundles cross-validated on the same folds of the same dataset version predicted the
same rows from the same training data, so their out-of-fold predictions can be compared
row by row without touching the test split: that is how the gate chooses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modalfuse.errors import ModelError

OOF_FILE = "evaluation/oof.parquet"
ID, FOLD, TRUE = "id", "fold", "true_label"


class OutOfFoldError(ModelError, ValueError):
    """Two sets of out-of-fold predictions that cannot be compared (other rows, folds, labels)."""


def folds_digest(table: pd.DataFrame) -> str:
    """A short digest of which training row is in which fold (split table: id, split, fold)."""
    tr = table.loc[table["split"] == "train", ["id", "fold"]].sort_values("id")
    return hashlib.sha256(tr.to_csv(index=False).encode()).hexdigest()[:16]


@dataclass
class OutOfFold:
    """Per training row: its id, its CV fold, its true label and the held-out probabilities."""

    ids: np.ndarray
    folds: np.ndarray
    y: np.ndarray  # label index into `labels`
    proba: np.ndarray
    labels: list[str]

    def frame(self) -> pd.DataFrame:
        """One row per out-of-fold row: id, fold, true label and a probability column per label."""
        df = pd.DataFrame({ID: self.ids, FOLD: self.folds.astype(int),
                           TRUE: [self.labels[i] for i in self.y]})
        probs = pd.DataFrame(self.proba, columns=[f"proba_{lab}" for lab in self.labels])
        return pd.concat([df, probs], axis=1).sort_values(ID).reset_index(drop=True)

    def save(self, bundle_dir: Path) -> Path:
        """Write the out-of-fold predictions into the bundle folder; returns the file."""
        path = Path(bundle_dir) / OOF_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.frame().to_parquet(path, index=False)
        return path

    @classmethod
    def load(cls, bundle_dir: Path, labels: list[str]) -> OutOfFold | None:
        """The bundle's out-of-fold predictions, or None when it was trained without CV."""
        path = Path(bundle_dir) / OOF_FILE
        if not path.is_file():
            return None
        df = pd.read_parquet(path)
        pos = {lab: i for i, lab in enumerate(labels)}
        return cls(df[ID].to_numpy(), df[FOLD].to_numpy(), df[TRUE].map(pos).to_numpy(),
                   df[[f"proba_{lab}" for lab in labels]].to_numpy(), list(labels))

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class index of every row."""
        return self.proba.argmax(axis=1)


def check_comparable(a: OutOfFold, b: OutOfFold) -> None:
    """Refuse a row-by-row comparison unless both predicted the same rows in the same folds."""
    if a.labels != b.labels:
        raise OutOfFoldError(f"the two models predict different labels ({len(a.labels)} vs "
                             f"{len(b.labels)} classes)")
    if len(a.ids) != len(b.ids) or not np.array_equal(a.ids.astype(str), b.ids.astype(str)):
        raise OutOfFoldError(f"the out-of-fold rows differ ({len(a.ids)} vs {len(b.ids)} rows)")
    if not np.array_equal(a.folds, b.folds):
        raise OutOfFoldError("the same rows sit in different CV folds")
    if not np.array_equal(a.y, b.y):
        raise OutOfFoldError("the true labels of the out-of-fold rows differ")
