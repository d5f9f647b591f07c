"""Split audit check: ClassShareGapCheck, each class's share of train against its share of test."""

from __future__ import annotations

import pandas as pd

from modalfuse.data.audit import (
    Check,
    CheckResult,
    SplitContext,
    register_check,
)

# The largest difference allowed between a class's share of the training rows and its share of
# the test rows. A stratified cut keeps it within a few points (the rounding of whole groups);
# 15 points means the test part measures a different class mix than the model learned from.
# A test part of n rows cannot hold a share more finely than one row, 1/n, so the limit used is
# the larger of the two (a 5-row test part moves a class's share by 0.2 a row).
CLASS_SHARE_GAP_LIMIT = 0.15


@register_check
class ClassShareGapCheck(Check):
    """Each modelled class has about the same share of the rows in train and in test.

    Blocking. Decision: `class_balance` stays the non-blocking report it was (the counts per
    class and split, and its rule that every modelled class has a training row, which stays
    advisory: a class whose few rows form one group can only go to one side, and
    `min_class_count` is the setting for that). This check adds the blocking rule, so the
    report and its advisory rule do not change meaning for existing splits.
    """

    name = "class_share_gap"
    order = 2

    def __init__(self, limit: float = CLASS_SHARE_GAP_LIMIT):
        self.limit = limit

    def run(self, ctx: SplitContext) -> CheckResult:
        """Per class, |share of train rows - share of test rows|; fail when a class is over the
        limit (or one test row's share, when that is larger), naming it with its shares and row
        counts. Every modelled row scores its class's gap."""
        y = ctx.spec.target
        t = ctx.table[ctx.table["split"].isin(["train", "test"])]
        counts = pd.crosstab(t[y], t["split"]).reindex(columns=["train", "test"], fill_value=0)
        totals = counts.sum(axis=0).replace(0, 1)
        share = counts / totals
        gap = (share["train"] - share["test"]).abs()
        allowed = max(self.limit, 1 / int(totals["test"]))
        over = gap[gap > allowed + 1e-9].sort_values(ascending=False)
        rows = pd.DataFrame({ctx.spec.id_column: t[ctx.spec.id_column],
                             "score": t[y].map(gap).astype(float)})
        rows["flag"] = t[y].isin(over.index)
        return CheckResult(self.name, True, len(over) == 0, {
            "limit": self.limit,
            "allowed": round(allowed, 4),
            "max_share_gap": round(float(gap.max()), 4) if len(gap) else 0.0,
            "classes_over_limit": {
                str(c): {"train_share": round(float(share.at[c, "train"]), 4),
                         "test_share": round(float(share.at[c, "test"]), 4),
                         "train_rows": int(counts.at[c, "train"]),
                         "test_rows": int(counts.at[c, "test"])}
                for c in over.index[:20]},
        }, rows.reset_index(drop=True))
