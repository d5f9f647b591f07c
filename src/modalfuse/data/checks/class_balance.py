"""Split audit check: ClassBalanceCheck."""

from __future__ import annotations

import pandas as pd

from modalfuse.data.audit import (
    Check,
    CheckResult,
    SplitContext,
    register_check,
)


@register_check
class ClassBalanceCheck(Check):
    """Every modelled class is present in train, and class shares match across splits."""

    name = "class_balance"
    order = 2
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
