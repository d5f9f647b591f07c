"""Split audit check: TargetEncodingFieldCheck."""

from __future__ import annotations

import pandas as pd

from modalfuse.data.audit import (
    Check,
    CheckResult,
    SplitContext,
    register_check,
)
from modalfuse.spec import FieldKind


@register_check
class TargetEncodingFieldCheck(Check):
    """Report categorical/multi-valued values that almost name the target (e.g. Blaze).

    Not blocking: such a value is legitimate input at prediction time, but its use is a
    decision to document, and this check measures how much of the data it covers.
    """

    name = "target_encoding_values"
    order = 3
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
