"""Split audit check: NearDuplicateCheck."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalfuse.data.audit import (
    PHASH_THRESHOLD,
    Check,
    CheckResult,
    SplitContext,
    hamming_matrix,
    plain,
    register_check,
)


@register_check
class NearDuplicateCheck(Check):
    """No pair of near-identical images (perceptual hash) across train and test.

    Near-identical means within the threshold the split merged groups with (its
    `phash_threshold` parameter, PHASH_THRESHOLD by default), unless a threshold is given here.
    """

    name = "near_duplicate_crossing"
    order = 1

    def __init__(self, threshold: int | None = None):
        self.threshold = threshold

    def run(self, ctx: SplitContext) -> CheckResult:
        """Score each test row by its pHash distance to the nearest training image; flag those
        within the threshold."""
        if ctx.phash is None:
            return CheckResult(self.name, True, True, {"skipped": "no hashes"})
        threshold = (self.threshold if self.threshold is not None
                     else int(ctx.params.get("phash_threshold", PHASH_THRESHOLD)))
        split = ctx.table["split"].to_numpy()
        ids = ctx.table[ctx.spec.id_column].to_numpy()
        dist = hamming_matrix(ctx.phash)
        tr, te = split == "train", split == "test"
        cross = dist[np.ix_(te, tr)]
        pairs = np.argwhere(cross <= threshold)
        te_ids, tr_ids = ids[te], ids[tr]
        nearest = cross.min(axis=1) if tr.any() and te.any() else np.array([])
        rows = pd.DataFrame({ctx.spec.id_column: te_ids, "score": nearest})
        rows["flag"] = rows["score"] <= threshold
        upper = dist[np.triu_indices(len(dist), 1)]
        summary = {
            "threshold_hamming_bits": threshold,
            "hash": "pHash, 64 bits, of the opaque box of the image on mid grey",
            "pairs_crossing": len(pairs),
            "examples": [[plain(te_ids[i]), plain(tr_ids[j])] for i, j in pairs[:20]],
            "min_test_to_train_distance": int(nearest.min()) if len(nearest) else None,
            "pairs_within_threshold_overall": int((upper <= threshold).sum()),
        }
        if ctx.merging is not None and ctx.merging.refused:
            # A size cap kept these pairs in separate groups; say how many of them now cross.
            te_rows, tr_rows = np.flatnonzero(te), np.flatnonzero(tr)
            crossing = {frozenset((int(te_rows[i]), int(tr_rows[j]))) for i, j in pairs}
            kept_apart = {frozenset((x.row_a, x.row_b)) for x in ctx.merging.refused}
            summary["pairs_crossing_kept_apart_by_group_cap"] = len(crossing & kept_apart)
        return CheckResult(self.name, True, len(pairs) == 0, summary, rows)
