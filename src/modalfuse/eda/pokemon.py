"""Findings specific to the built-in Pokémon data: generations, legendaries, abilities vs type,
and Flying as a (mostly) secondary type. Every number is computed from the table."""

from __future__ import annotations

import pandas as pd

from modalfuse.data.builders.pokemon import STATS
from modalfuse.eda.html_report import (
    EdaContext,
    Section,
    cramers_v,
    explode_multi,
    figure_png,
    heatmap_figure,
    html_table,
    pct,
    pyplot,
)


def generation_section(ctx: EdaContext) -> Section:
    """How the type mix changes over game generations."""
    t, y, classes = ctx.table, ctx.y, ctx.classes
    gen = t["generation"].astype(int)
    share = pd.crosstab(y, gen, normalize="columns").reindex(classes)
    counts = gen.value_counts().sort_index()
    share.columns = [f"gen {g} (n={counts[g]})" for g in share.columns]
    s = Section("Pokémon: per generation", figures=[(figure_png(heatmap_figure(
        share, "share of each primary type within a generation", width=8)),
        "type mix per generation")])
    spread = (share.max(1) - share.min(1)).sort_values(ascending=False)
    c = spread.index[0]
    hi, lo = share.loc[c].idxmax(), share.loc[c].idxmin()
    v = cramers_v(gen, y)
    s.shows.append(
        "Species per generation: " + ", ".join(f"gen {g} {n}" for g, n in counts.items()) +
        f". The type whose share moves most is {c}: {pct(share.loc[c, hi])} of {hi} against "
        f"{pct(share.loc[c, lo])} of {lo}. Association of generation with type: Cramér's V "
        f"{v:.2f}.")
    first = counts.index[0]
    absent = [c for c in classes if (y[gen == first] == c).sum() == 0 and (y == c).sum() > 1]
    if absent:
        s.shows.append(f"Types with no species in gen {first} but some later: "
                       f"{', '.join(absent)}.")
    s.means.append(f"Generation alone is a weak input (V = {v:.2f}); its value lies in "
                   "interactions, e.g. types that only appear in later generations.")
    split = ctx.split_of()
    if split is not None:
        tr = gen[split == "train"].value_counts(normalize=True)
        te = gen[split == "test"].value_counts(normalize=True)
        gap = (tr - te).abs()
        g = gap.idxmax()
        s.shows.append(f"Generation shares of train and test differ by at most "
                       f"{pct(gap.max(), 1)} (gen {g}: {pct(tr.get(g, 0))} of train, "
                       f"{pct(te.get(g, 0))} of test).")
        s.means.append("The split is stratified by type and grouped by family, not by "
                       "generation" + (": with a gap this size, compare per-generation metrics "
                       "before reading much into one." if gap.max() >= 0.05 else
                       ", and the generation mix still comes out close."))
    return s


def legendary_section(ctx: EdaContext) -> Section:
    """How legendary and mythical species differ in type and base stats."""
    plt = pyplot()
    t, y, classes = ctx.table, ctx.y, ctx.classes
    special = t["is_legendary"].astype(bool) | t["is_mythical"].astype(bool)
    bst = t[list(STATS)].sum(axis=1)
    share = special.groupby(y).mean().reindex(classes)
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.bar(share.index, share.to_numpy(), color="#b07aa1")
    ax.set_ylabel("legendary or mythical")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.set_title("share of legendary or mythical species per primary type", fontsize=10)
    s = Section("Pokémon: legendary share", figures=[(figure_png(fig), "legendary share")])
    sizes = y.value_counts()
    top = share[sizes.reindex(share.index) >= 5].sort_values(ascending=False)
    s.shows.append(
        f"{int(special.sum())} of {len(t)} species ({pct(special.mean(), 1)}) are legendary or "
        f"mythical; among types with 5 or more species the highest shares are "
        f"{', '.join(f'{c} {pct(v)}' for c, v in top.head(3).items())}. "
        f"Their median base-stat total is {bst[special].median():.0f} against "
        f"{bst[~special].median():.0f} for the rest.")
    s.means.append("Legendaries are few, strong and concentrated in a few types: a model can "
                   f"learn 'very high stats -> {' or '.join(top.index[:2])}' from a handful of "
                   "rows. Slice metrics by legendary status before trusting a gain on them.")
    return s


def abilities_section(ctx: EdaContext) -> Section:
    """Which abilities all but name the type, and how many families share each."""
    t, y = ctx.table, ctx.y
    ex = explode_multi(t["abilities"])
    frame = pd.DataFrame({"ability": ex.to_numpy(), "type": y.loc[ex.index].to_numpy(),
                          "family": t.loc[ex.index, ctx.spec.group_column].to_numpy()})
    stats = frame.groupby("ability").agg(species=("type", "size"), types=("type", "nunique"),
                                         top_type=("type", lambda s: s.value_counts().index[0]),
                                         families=("family", "nunique"))
    exclusive = stats[(stats["species"] >= 2) & (stats["types"] == 1)]
    holders = frame[frame["ability"].isin(exclusive.index)].index.unique()
    within_family = exclusive[exclusive["families"] == 1]
    s = Section("Pokémon: abilities against type")
    table = exclusive.sort_values("species", ascending=False).reset_index()
    s.tables.append(html_table(table.head(15)))
    s.shows.append(
        f"{len(stats)} distinct abilities. {len(exclusive)} of those carried by two or more "
        f"species belong to a single primary type; {pct(len(holders) / len(t))} of species "
        f"carry at least one. {len(within_family)} of these type-exclusive abilities occur in "
        "one evolution family only. The table lists the most widespread ones.")
    s.means.append(
        "Abilities are the strongest tabular signal and partly a family fingerprint: under a "
        "random split, siblings on both sides let the model look up the family; grouped "
        "splits measure what generalises to unseen families. Whether to use abilities at all "
        "is a documented choice (the split audit counts the rows they cover).")
    sec = t["secondary_type"].astype(object) if "secondary_type" in t else None
    if sec is not None:
        for typ in ("Flying",):
            primary = int((y == typ).sum())
            secondary = int((sec == typ).sum())
            s.shows.append(f"{typ} is the primary type of {primary} species and the secondary "
                           f"type of {secondary}.")
            s.means.append(f"As a primary-type target {typ} is nearly empty because the "
                           "Pokédex lists it second by convention; a 'has type X' multi-label "
                           "target would keep it learnable.")
    return s


def findings(ctx: EdaContext) -> list[Section]:
    """The Pokémon-only sections of the EDA report (none when the table lacks their columns)."""
    needed = {"generation", "is_legendary", "is_mythical", "abilities", *STATS}
    if not needed <= set(ctx.table.columns):
        return []
    return [generation_section(ctx), legendary_section(ctx), abilities_section(ctx)]

