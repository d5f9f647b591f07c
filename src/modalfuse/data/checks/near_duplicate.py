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
    register_check,
)


@register_check
class NearDuplicateCheck(Check):
    """No pair of near-identical images (perceptual hash) across train and test."""

    name = "near_duplicate_crossing"
    order = 1

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
