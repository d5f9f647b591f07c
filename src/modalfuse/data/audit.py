"""Leakage audit of a split. Every check shares one contract: per-row scores, a flag, a summary.

Adding a check is adding a class to CHECKS; `audit_split` runs them all and the split
fails when a blocking check flags anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from modalfuse.spec import DatasetSpec, FieldKind

# Near-duplicate threshold on a 64-bit pHash of the cropped front image. Hashing the
# padded canvas instead makes small sprites collide (the blob's size dominates the DCT):
# on the crop, distinct species of the built-in data are >= 12 bits apart, a shiny and a
# normal sprite of one species a few bits. 8 sits between the two.
PHASH_THRESHOLD = 8


@dataclass
class CheckResult:
    """What one audit check found: whether it passed, a summary, and per-row scores and flags."""

    name: str
    blocking: bool
    passed: bool
    summary: dict
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-row score and flag

    def to_dict(self) -> dict:
        """The result without its rows, as the split audit JSON records it."""
        return {"name": self.name, "blocking": self.blocking, "passed": self.passed,
                "summary": self.summary}


@dataclass
class SplitContext:
    """What every check reads: the spec, the table with its split and fold, and image hashes."""

    spec: DatasetSpec
    table: pd.DataFrame  # with columns split ("train"/"test"/"excluded") and fold
    phash: np.ndarray | None  # (n, 64) bool bits per row, aligned with table


class Check:
    """The contract of a leakage check: `run` a split context, return a CheckResult.

    How to implement a new one: subclass it, set `name` (and `blocking = False` for a
    check that only reports), implement `run`, and add the class to CHECKS.
    """

    name: ClassVar[str]
    blocking: ClassVar[bool] = True

    def run(self, ctx: SplitContext) -> CheckResult:
        """Score every row of the split and say whether the check passes."""
        raise NotImplementedError


class GroupCrossingCheck(Check):
    """No group (evolution family) may have members on both sides of train/test."""

    name = "group_crossing"

    def run(self, ctx: SplitContext) -> CheckResult:
        """Flag the groups with rows on both sides of train/test."""
        t = ctx.table[ctx.table["split"] != "excluded"]
        g = ctx.spec.group_column
        sides = t.groupby(g)["split"].nunique()
        crossing = sides[sides > 1].index
        rows = pd.DataFrame({ctx.spec.id_column: t[ctx.spec.id_column],
                             "score": t[g].isin(crossing).astype(float)})
        rows["flag"] = rows["score"] > 0
        # CV folds must not split a group either.
        tr = t[t["split"] == "train"]
        fold_cross = int((tr.groupby(g)["fold"].nunique() > 1).sum())
        return CheckResult(self.name, True, len(crossing) == 0 and fold_cross == 0, {
            "groups_crossing_train_test": len(crossing),
            "groups_crossing_cv_folds": fold_cross,
            "crossing_groups": [str(x) for x in crossing[:20]],
        }, rows)


class NearDuplicateCheck(Check):
    """No pair of near-identical images (perceptual hash) across train and test."""

    name = "near_duplicate_crossing"

    def __init__(self, threshold: int = PHASH_THRESHOLD):
        self.threshold = threshold

    def run(self, ctx: SplitContext) -> CheckResult:
        """Score each test row by its pHash distance to the nearest training image; flag those
        within the threshold."""
        if ctx.phash is None:
            return CheckResult(self.name, True, True, {"skipped": "no hashes"})
        split = ctx.table["split"].to_numpy()
        ids = ctx.table[ctx.spec.id_column].to_numpy()
        dist = hamming_matrix(ctx.phash)
        tr, te = split == "train", split == "test"
        cross = dist[np.ix_(te, tr)]
        pairs = np.argwhere(cross <= self.threshold)
        te_ids, tr_ids = ids[te], ids[tr]
        nearest = cross.min(axis=1) if tr.any() and te.any() else np.array([])
        rows = pd.DataFrame({ctx.spec.id_column: te_ids, "score": nearest})
        rows["flag"] = rows["score"] <= self.threshold
        upper = dist[np.triu_indices(len(dist), 1)]
        return CheckResult(self.name, True, len(pairs) == 0, {
            "threshold_hamming_bits": self.threshold,
            "hash": "pHash, 64 bits, of the opaque box of the image on mid grey",
            "pairs_crossing": len(pairs),
            "examples": [[int(te_ids[i]), int(tr_ids[j])] for i, j in pairs[:20]],
            "min_test_to_train_distance": int(nearest.min()) if len(nearest) else None,
            "pairs_within_threshold_overall": int((upper <= self.threshold).sum()),
        }, rows)


class ClassBalanceCheck(Check):
    """Every modelled class is present in train, and class shares match across splits."""

    name = "class_balance"
    blocking = False

    def run(self, ctx: SplitContext) -> CheckResult:
        """Count each class per split; fails, without blocking, when a modelled class has no
        training row."""
        t = ctx.table
        y = ctx.spec.target
        counts = pd.crosstab(t[y], t["split"])
        modelled = t[t["split"] != "excluded"]
        share = pd.crosstab(modelled[y], modelled["split"], normalize="columns")
        gap = (share.max(axis=1) - share.min(axis=1)) if share.shape[1] > 1 else share.iloc[:, 0] * 0
        in_train = counts.loc[modelled[y].unique()].get("train", pd.Series(dtype=int))
        return CheckResult(self.name, False, bool((in_train > 0).all()), {
            "counts": {str(k): {str(c): int(v) for c, v in row.items()}
                       for k, row in counts.iterrows()},
            "max_share_gap": float(gap.max()) if len(gap) else 0.0,
        })


class TargetEncodingFieldCheck(Check):
    """Report categorical/multi-valued values that almost name the target (e.g. Blaze).

    Not blocking: such a value is legitimate input at prediction time, but its use is a
    decision to document, and this check measures how much of the data it covers.
    """

    name = "target_encoding_values"
    blocking = False

    def run(self, ctx: SplitContext) -> CheckResult:
        """Per categorical or multi-valued field: the values that point to one class in 90% of
        their training rows, and the share of rows holding one."""
        t = ctx.table[ctx.table["split"] == "train"]
        y = ctx.spec.target
        out = {}
        for f in ctx.spec.fields:
            if f.kind not in (FieldKind.categorical, FieldKind.multi):
                continue
            vals = t[f.name].fillna("").astype(str)
            exploded = pd.DataFrame({"v": vals.str.split("|"), "y": t[y]}).explode("v")
            exploded = exploded[exploded["v"] != ""]
            stats = exploded.groupby("v")["y"].agg(["size", lambda s: s.value_counts().iloc[0]])
            stats.columns = ["n", "top"]
            pure = stats[(stats["n"] >= 3) & (stats["top"] / stats["n"] >= 0.9)]
            pure_values = set(pure.index)
            rows_covered = vals.str.split("|").map(lambda vs, pv=pure_values: bool(set(vs) & pv))
            out[f.name] = {"values_with_3plus_rows": int((stats["n"] >= 3).sum()),
                           "values_90pct_one_class": len(pure),
                           "share_of_train_rows_with_such_a_value": float(rows_covered.mean())}
        return CheckResult(self.name, False, True, out)


CHECKS: list[type[Check]] = [GroupCrossingCheck, NearDuplicateCheck, ClassBalanceCheck,
                             TargetEncodingFieldCheck]


def phash_bits(rgba: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash (DCT) of the opaque box of an RGBA image, on mid grey."""
    import imagehash

    img = Image.fromarray(rgba, "RGBA")
    bbox = img.getchannel("A").getbbox()
    if bbox is not None:
        img = img.crop(bbox)
    bg = Image.new("RGBA", img.size, (128, 128, 128, 255))
    return np.asarray(imagehash.phash(Image.alpha_composite(bg, img).convert("RGB")).hash).ravel()


def hamming_matrix(bits: np.ndarray) -> np.ndarray:
    """(n, n) Hamming distances between rows of (n, bits) boolean hashes."""
    b = bits.astype(np.int32)
    return (b[:, None, :] != b[None, :, :]).sum(axis=2)


def audit_split(ctx: SplitContext, checks: list[Check] | None = None) -> list[CheckResult]:
    """Run the given checks (all of CHECKS by default) on a split."""
    return [c.run(ctx) for c in (checks or [cls() for cls in CHECKS])]
