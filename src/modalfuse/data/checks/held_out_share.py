"""Split audit check: HeldOutShareCheck, the realised test share against the one asked for."""

from __future__ import annotations

import pandas as pd

from modalfuse.data.audit import (
    Check,
    CheckResult,
    SplitContext,
    register_check,
)

# How far (in share of modelled rows) the test part may be from the `test_size` asked for. The
# grouped cut moves whole groups, so a few points off is normal; 10 points off (30 % for 20 %
# asked) means one group or a chain of merged groups was big enough to decide the test part.
# Under 10 modelled rows one row is more than that, so the tolerance is at least one row's share.
TEST_SHARE_TOLERANCE = 0.10


@register_check
class HeldOutShareCheck(Check):
    """The test part holds about the share of modelled rows the split asked for (`test_size`).

    Blocking: a test part 10 points or more off the request is no longer the held-out sample
    the settings describe; it usually means one oversized group landed whole in it.
    """

    name = "test_share"
    order = 2

    def __init__(self, tolerance: float = TEST_SHARE_TOLERANCE):
        self.tolerance = tolerance

    def run(self, ctx: SplitContext) -> CheckResult:
        """Compare the test rows' share of train + test rows with `ctx.params["test_size"]`;
        fail when they differ by the tolerance (or one row's share, if larger) or more. Every
        test row scores that gap."""
        requested = ctx.params.get("test_size")
        if requested is None:
            return CheckResult(self.name, True, True, {"skipped": "the split's test_size is not known"})
        split = ctx.table["split"]
        modelled = int(split.isin(["train", "test"]).sum())
        test = int((split == "test").sum())
        realised = test / modelled if modelled else 0.0
        gap = abs(realised - float(requested))
        allowed = max(self.tolerance, 1 / modelled) if modelled else self.tolerance
        # 1e-9: 0.3 - 0.2 is 0.0999...; ten points off must count as ten points.
        passed = gap < allowed - 1e-9
        rows = pd.DataFrame({ctx.spec.id_column: ctx.table.loc[split == "test", ctx.spec.id_column],
                             "score": gap})
        rows["flag"] = not passed
        return CheckResult(self.name, True, passed, {
            "requested": float(requested),
            "realised": round(realised, 4),
            "gap": round(gap, 4),
            "tolerance": round(allowed, 4),
            "test_rows": test,
            "modelled_rows": modelled,
        }, rows.reset_index(drop=True))
