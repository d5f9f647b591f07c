"""Split audit check: GroupCrossingCheck."""

from __future__ import annotations

import pandas as pd

from modalfuse.data.audit import (
    Check,
    CheckResult,
    SplitContext,
    register_check,
)


@register_check
class GroupCrossingCheck(Check):
    """No group (evolution family) may have members on both sides of train/test."""

    name = "group_crossing"
    order = 0

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
