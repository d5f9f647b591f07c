"""Leakage-safe splits: a frozen test split and grouped CV folds on the rest, then an audit.

Rows are grouped by the dataset's group column (evolution family for Pokémon), and
near-duplicate images are merged into one group before splitting, so neither a family
nor a look-alike can sit on both sides. Both cuts are stratified by the target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import track

from modalfuse.data.audit import (
    PHASH_THRESHOLD,
    CheckResult,
    SplitContext,
    audit_split,
    hamming_matrix,
    phash_bits,
)
from modalfuse.data.dataset import Dataset
from modalfuse.errors import DataError, MissingData
from modalfuse.features.image import normalize_image

SPLITS_FILE = "splits.parquet"
AUDIT_FILE = "split_audit.json"


class SplitError(DataError):
    """The split breaks a blocking leakage rule."""


@dataclass
class Splits:
    """A dataset's split: each row's part (train, test, excluded) and CV fold, with the audit that passed it.

    Training, tuning and evaluation all read their rows from it; it is saved beside the dataset.
    """

    table: pd.DataFrame  # id, split, fold (fold = -1 outside train)
    audit: dict

    def ids(self, split: str) -> np.ndarray:
        """The ids of the rows in one part ("train", "test" or "excluded")."""
        return self.table.loc[self.table["split"] == split, "id"].to_numpy()

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train ids, validation ids) for each CV fold of the training part."""
        tr = self.table[self.table["split"] == "train"]
        return [(tr.loc[tr["fold"] != k, "id"].to_numpy(), tr.loc[tr["fold"] == k, "id"].to_numpy())
                for k in sorted(tr["fold"].unique())]


def _components(groups: np.ndarray, bits: np.ndarray, threshold: int) -> np.ndarray:
    """Merge groups whose images are within `threshold` bits of each other."""
    codes, inv = np.unique(groups, return_inverse=True)
    parent = list(range(len(codes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist = hamming_matrix(bits)
    for i, j in np.argwhere(np.triu(dist <= threshold, 1)):
        a, b = find(inv[i]), find(inv[j])
        if a != b:
            parent[a] = b
    return np.array([find(k) for k in inv])


def _stratified_group_cut(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
        np.zeros(len(y)), y, groups
    )


def make_splits(ds: Dataset, seed: int = 42, test_size: float = 0.2, n_folds: int = 5,
                phash_threshold: int = PHASH_THRESHOLD) -> Splits:
    """Split a dataset into a grouped, stratified test part and CV folds, and audit it for leakage.

    Raises SplitError when a blocking audit check fails."""
    spec = ds.spec
    t = ds.table[[spec.id_column, spec.target, spec.group_column]].copy()
    t = t.rename(columns={spec.id_column: "id"}) if spec.id_column != "id" else t
    counts = t[spec.target].value_counts()
    rare = set(counts[counts < spec.min_class_count].index)
    modelled = ~t[spec.target].isin(rare)

    bits = np.stack([
        phash_bits(normalize_image(ds.image_bytes(n), spec.image_size, 10_000_000))
        for n in track(ds.table[spec.image_column], description="perceptual hashes")
    ])
    merged = _components(t[spec.group_column].to_numpy(), bits, phash_threshold)

    split = np.full(len(t), "excluded", dtype=object)
    fold = np.full(len(t), -1)
    idx = np.flatnonzero(modelled.to_numpy())
    y, g = t[spec.target].to_numpy()[idx], merged[idx]
    n_outer = max(2, round(1 / test_size))
    train_pos, test_pos = next(iter(_stratified_group_cut(y, g, n_outer, seed)))
    split[idx[train_pos]] = "train"
    split[idx[test_pos]] = "test"
    tr = idx[train_pos]
    for k, (_, val) in enumerate(_stratified_group_cut(t[spec.target].to_numpy()[tr],
                                                       merged[tr], n_folds, seed)):
        fold[tr[val]] = k
    t["split"], t["fold"] = split, fold

    ctx_table = ds.table.assign(split=split, fold=fold)
    results = audit_split(SplitContext(spec, ctx_table, bits), None)
    audit = _audit_dict(ds, t, results, seed, test_size, n_folds, rare, phash_threshold)
    failed = [r for r in results if r.blocking and not r.passed]
    if failed:
        raise SplitError("split fails the leakage audit: " + "; ".join(
            f"{r.name}: {r.summary}" for r in failed))
    return Splits(table=t[["id", "split", "fold"]].reset_index(drop=True), audit=audit)


def _audit_dict(ds: Dataset, t: pd.DataFrame, results: list[CheckResult], seed: int,
                test_size: float, n_folds: int, rare: set, threshold: int) -> dict:
    g = ds.spec.group_column
    per_split = {
        s: {"rows": int((t["split"] == s).sum()), "groups": int(t.loc[t["split"] == s, g].nunique())}
        for s in ("train", "test", "excluded")
    }
    return {
        "dataset": ds.spec.name,
        "dataset_version": ds.version,
        "params": {"seed": seed, "test_size": test_size, "n_folds": n_folds,
                   "phash_threshold": threshold, "min_class_count": ds.spec.min_class_count},
        "excluded_classes": sorted(rare),
        "per_split": per_split,
        "fold_sizes": {int(k): int(v) for k, v in
                       t[t["fold"] >= 0]["fold"].value_counts().sort_index().items()},
        "checks": [r.to_dict() for r in results],
        "passed": all(r.passed for r in results if r.blocking),
    }


def save_splits(splits: Splits, root: Path) -> None:
    """Write the split table and its audit beside the dataset."""
    splits.table.to_parquet(root / SPLITS_FILE, index=False)
    (root / AUDIT_FILE).write_text(json.dumps(splits.audit, indent=2, default=str))


def load_splits(ds: Dataset) -> Splits:
    """The saved split of `ds`; refuses one made for another version of the data."""
    path = ds.root / SPLITS_FILE
    if not path.exists():
        raise MissingData(f"no splits for {ds.root}; run `modalfuse data split` first")
    audit = json.loads((ds.root / AUDIT_FILE).read_text())
    if audit.get("dataset_version") != ds.version:
        raise SplitError(
            f"splits were made for dataset version {audit.get('dataset_version')}, but the dataset "
            f"is version {ds.version}; run `modalfuse data split` again"
        )
    return Splits(table=pd.read_parquet(path), audit=audit)


__all__ = ["SplitError", "Splits", "load_splits", "make_splits", "save_splits"]
