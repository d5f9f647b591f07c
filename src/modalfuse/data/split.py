"""Leakage-safe splits: a frozen test split and grouped CV folds on the rest, then an audit.

Rows are grouped by the dataset's group column (evolution family for Pokémon), and
near-duplicate images are merged into one group before splitting, so neither a family
nor a look-alike can sit on both sides. Both cuts are stratified by the target.

Merging is transitive: image A near B and B near C put the groups of A, B and C together even
when A and C are far apart, so a run of look-alikes can chain into one giant group that lands
whole on one side. The audit measures that (merged_groups, test_share, class_share_gap);
`max_group_share` caps it and `modalfuse data split --explain` shows the chains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modalfuse.data.audit import (
    PHASH_THRESHOLD,
    CheckResult,
    GroupMerging,
    MergeLink,
    SplitContext,
    audit_split,
    describe_merged_groups,
    hamming_matrix,
    phash_bits,
)
from modalfuse.data.dataset import Dataset
from modalfuse.errors import DataError, InvalidInput, MissingData
from modalfuse.features.image import normalize_image
from modalfuse.progress import SILENT, ProgressReporter, steps

SPLITS_FILE = "splits.parquet"
AUDIT_FILE = "split_audit.json"
LARGEST_GROUPS_SHOWN = 5  # the largest merged groups the audit describes


class SplitError(DataError):
    """The split breaks a blocking leakage rule."""


@dataclass
class Splits:
    """A dataset's split: each row's part (train, test, excluded) and CV fold, with its audit.

    Training, tuning and evaluation all read their rows from it; it is saved beside the dataset
    only when the audit passes (`make_splits`); `plan_splits` also returns one that fails.
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

    def blocking_failures(self) -> list[dict]:
        """The audit's results (name, summary, ...) of the blocking checks the split fails;
        empty when it passes."""
        return [c for c in self.audit["checks"] if c["blocking"] and not c["passed"]]


def merge_near_duplicates(groups: np.ndarray, bits: np.ndarray, threshold: int,
                          max_group_share: float | None = None) -> GroupMerging:
    """Merge groups whose images are within `threshold` bits of each other (union-find).

    Pairs are taken in row order; each pair that joins two groups is kept as a link. With
    `max_group_share`, a join that would make a merged group hold more than that share of the
    rows is refused and kept in `refused` instead; without it every pair joins (the merging
    splits have always used).
    """
    codes, inv = np.unique(groups, return_inverse=True)
    parent = list(range(len(codes)))
    size = np.bincount(inv, minlength=len(codes))  # rows per root
    max_rows = None if max_group_share is None else max_group_share * len(groups)
    links: list[MergeLink] = []
    refused: list[MergeLink] = []

    def find(i: int) -> int:
        """The root of group i, halving the path on the way."""
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist = hamming_matrix(bits)
    for i, j in np.argwhere(np.triu(dist <= threshold, 1)):
        a, b = find(inv[i]), find(inv[j])
        if a == b:
            continue
        link = MergeLink(int(i), int(j), int(dist[i, j]))
        if max_rows is not None and size[a] + size[b] > max_rows:
            refused.append(link)
            continue
        parent[a] = b
        size[b] += size[a]
        links.append(link)
    labels = np.array([find(k) for k in inv])
    return GroupMerging(labels, links, refused, threshold, max_group_share)


def _stratified_group_cut(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    """Shuffled StratifiedGroupKFold over (y, groups): (train positions, held-out positions) per fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
        np.zeros(len(y)), y, groups
    )


def plan_splits(ds: Dataset, seed: int = 42, test_size: float = 0.2, n_folds: int = 5,
                phash_threshold: int = PHASH_THRESHOLD,
                max_group_share: float | None = None,
                reporter: ProgressReporter = SILENT) -> Splits:
    """Compute the split and its audit without judging it: a failing audit is in the result
    (`Splits.audit["passed"]`, `Splits.blocking_failures()`), not raised. Nothing is written.

    `phash_threshold` is how many bits apart two images may be and still count as
    near-duplicates; `max_group_share` caps a merged group's share of the rows (None = no cap).
    Raises InvalidInput for a value out of range.
    """
    _check_params(test_size, n_folds, phash_threshold, max_group_share)
    spec = ds.spec
    t = ds.table[[spec.id_column, spec.target, spec.group_column]].copy()
    t = t.rename(columns={spec.id_column: "id"}) if spec.id_column != "id" else t
    counts = t[spec.target].value_counts()
    rare = set(counts[counts < spec.min_class_count].index)
    modelled = ~t[spec.target].isin(rare)

    bits = np.stack([
        phash_bits(normalize_image(ds.image_bytes(n), spec.image_size, 10_000_000))
        for n in steps(list(ds.table[spec.image_column]), reporter, "image", "perceptual hashes")
    ])
    merging = merge_near_duplicates(t[spec.group_column].to_numpy(), bits, phash_threshold,
                                    max_group_share)
    merged = merging.labels

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

    params = {"seed": seed, "test_size": test_size, "n_folds": n_folds,
              "phash_threshold": phash_threshold, "max_group_share": max_group_share,
              "min_class_count": spec.min_class_count}
    ctx = SplitContext(spec, ds.table.assign(split=split, fold=fold).reset_index(drop=True),
                       bits, params, merging)
    results = audit_split(ctx, None)
    audit = _audit_dict(ds, t, results, params, rare)
    audit["largest_groups"] = describe_merged_groups(ctx, top=LARGEST_GROUPS_SHOWN)
    return Splits(table=t[["id", "split", "fold"]].reset_index(drop=True), audit=audit)


def make_splits(ds: Dataset, seed: int = 42, test_size: float = 0.2, n_folds: int = 5,
                phash_threshold: int = PHASH_THRESHOLD,
                max_group_share: float | None = None,
                reporter: ProgressReporter = SILENT) -> Splits:
    """Split a dataset into a grouped, stratified test part and CV folds, and audit it for leakage.

    The arguments are those of `plan_splits`. Raises SplitError when a blocking audit check
    fails."""
    splits = plan_splits(ds, seed, test_size, n_folds, phash_threshold, max_group_share, reporter)
    failed = splits.blocking_failures()
    if failed:
        raise SplitError("split fails the leakage audit: " + "; ".join(
            f"{c['name']}: {json.dumps(c['summary'], default=str)}" for c in failed))
    return splits


def _check_params(test_size: float, n_folds: int, phash_threshold: int,
                  max_group_share: float | None) -> None:
    """Refuse split settings out of range, naming the value and the range allowed."""
    if not 0 < test_size < 1:
        raise InvalidInput(f"test_size {test_size} is not allowed: give a share between 0 and 1")
    if n_folds < 2:
        raise InvalidInput(f"n_folds {n_folds} is not allowed: give 2 or more folds")
    if not 0 <= phash_threshold <= 64:
        raise InvalidInput(f"phash_threshold {phash_threshold} is not allowed: give 0 to 64 bits")
    if max_group_share is not None and not 0 < max_group_share <= 1:
        raise InvalidInput(f"max_group_share {max_group_share} is not allowed: give a share "
                           "above 0 and at most 1, or none for no cap")


def _audit_dict(ds: Dataset, t: pd.DataFrame, results: list[CheckResult], params: dict,
                rare: set) -> dict:
    """The split audit as split_audit.json records it: parameters, sizes, each check's result."""
    g = ds.spec.group_column
    per_split = {
        s: {"rows": int((t["split"] == s).sum()), "groups": int(t.loc[t["split"] == s, g].nunique())}
        for s in ("train", "test", "excluded")
    }
    return {
        "dataset": ds.spec.name,
        "dataset_version": ds.version,
        "params": params,
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


__all__ = ["SplitError", "Splits", "load_splits", "make_splits", "merge_near_duplicates",
           "plan_splits", "save_splits"]
