"""Split audit check: MergedGroupCheck, the groups that near-duplicate merging chained together."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalfuse.data.audit import (
    Check,
    CheckResult,
    SplitContext,
    describe_merged_groups,
    register_check,
)

# A merged group holding more than this share of all rows is reported. At 2 % one group
# already moves the test share by 2 points and its class's share by more; a run of look-alike
# images (flags, logos, sprites of one template) chains to such sizes, while near-duplicate
# pairs of ordinary data join two or three small groups.
MERGED_GROUP_WARN_SHARE = 0.02
# Only groups that merging joined from this many original groups or more are reported: two
# groups joined by one near-duplicate pair are the merging doing its job, three or more are a
# chain, where images far apart can end up together through the ones between them.
MIN_GROUPS_IN_A_CHAIN = 3
SHOWN_GROUPS = 3  # flagged groups described in the summary
SHOWN_LINKS = 10  # links of each


@register_check
class MergedGroupCheck(Check):
    """No group chained by near-duplicate merging holds more than 2 % of the rows.

    Not blocking: a big merged group may be right (true duplicates), but it should be seen. The
    summary names the largest group, and for each flagged one the original groups it joined,
    its side of the split, the widest Hamming distance between the images its links touch
    (`span_bits`; above the threshold, the chain joined images that are not near-duplicates of
    each other) and
    the first image pairs (ids, groups, bits) that chained it. `make_splits(max_group_share=...)`
    and `--phash-threshold` are the remedies.
    """

    name = "merged_groups"
    order = 1
    blocking = False

    def __init__(self, warn_share: float = MERGED_GROUP_WARN_SHARE,
                 min_groups: int = MIN_GROUPS_IN_A_CHAIN):
        self.warn_share = warn_share
        self.min_groups = min_groups

    def run(self, ctx: SplitContext) -> CheckResult:
        """Size every merged group; flag the chained ones over the share. Each row scores its
        merged group's share of the rows."""
        if ctx.merging is None:
            return CheckResult(self.name, False, True, {"skipped": "no merging recorded"})
        m, n = ctx.merging, len(ctx.table)
        groups = ctx.table[ctx.spec.group_column].to_numpy()
        frame = pd.DataFrame({"label": m.labels, "group": groups})
        per_label = frame.groupby("label").agg(rows=("group", "size"), joined=("group", "nunique"))
        per_label["share"] = per_label["rows"] / n
        flagged = per_label[(per_label["share"] > self.warn_share)
                            & (per_label["joined"] >= self.min_groups)]
        largest = per_label.sort_values(["rows", "joined"], ascending=False).iloc[0]
        share = per_label["share"].reindex(m.labels).to_numpy()
        rows = pd.DataFrame({ctx.spec.id_column: ctx.table[ctx.spec.id_column].to_numpy(),
                             "score": share, "flag": np.isin(m.labels, flagged.index)})
        return CheckResult(self.name, False, len(flagged) == 0, {
            "warn_share": self.warn_share,
            "largest_group_rows": int(largest["rows"]),
            "largest_group_share": round(float(largest["share"]), 4),
            "largest_group_original_groups": int(largest["joined"]),
            "merged_groups": int((per_label["joined"] > 1).sum()),
            "links": len(m.links),
            "refused_links": len(m.refused),
            "max_group_share": m.max_group_share,
            "flagged_groups": describe_merged_groups(
                ctx, top=SHOWN_GROUPS, max_links=SHOWN_LINKS,
                labels=list(flagged.sort_values("rows", ascending=False).index[:SHOWN_GROUPS])),
        }, rows)
