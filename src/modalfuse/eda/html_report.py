"""The EDA report of a dataset: sections driven by its DatasetSpec, rendered to one HTML file.

Every number in the text is computed here from the data; plots are matplotlib PNGs embedded
as base64, so the file opens anywhere without a network. A dataset may add its own
findings (see FINDINGS); the built-in Pokémon data does.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from modalfuse.data.audit import PHASH_THRESHOLD, hamming_matrix, phash_bits
from modalfuse.data.dataset import Dataset
from modalfuse.data.split import AUDIT_FILE, SPLITS_FILE
from modalfuse.features.image import HUE_BINS, IMAGE_FEATURE_NAMES, image_features, normalize_image
from modalfuse.spec import FieldKind

# Dataset-specific findings: dataset name -> "module:function" returning a list of Sections.
FINDINGS = {"pokemon": "modalfuse.eda.pokemon:findings"}
HUE_NAMES = ["red", "orange", "yellow", "yellow-green", "green", "green-cyan", "cyan", "azure",
             "blue", "violet", "magenta", "pink-red"]


@dataclass
class Section:
    """One section of the EDA report: what its figures and tables show and what that means for modelling."""

    title: str
    shows: list[str] = field(default_factory=list)  # what the plots and tables show
    means: list[str] = field(default_factory=list)  # what it means for modelling
    figures: list[tuple[str, str]] = field(default_factory=list)  # (base64 PNG, caption)
    tables: list[str] = field(default_factory=list)  # HTML tables


@dataclass
class EdaContext:
    """The dataset and what several sections share, computed once."""

    ds: Dataset
    audit: dict | None
    splits: pd.DataFrame | None
    _images: np.ndarray | None = None
    _features: np.ndarray | None = None

    @property
    def spec(self):
        """The dataset's spec."""
        return self.ds.spec

    @property
    def table(self) -> pd.DataFrame:
        """The dataset's table."""
        return self.ds.table

    @property
    def y(self) -> pd.Series:
        """The target of every row, as text."""
        return self.ds.table[self.spec.target].astype(str)

    @property
    def classes(self) -> list[str]:
        """Classes, most frequent first (ties by name)."""
        counts = self.y.value_counts()
        return sorted(counts.index, key=lambda c: (-counts[c], c))

    def images(self) -> np.ndarray:
        """Every row's image as the models see it (normalized RGBA), in table order."""
        if self._images is None:
            size = self.spec.image_size
            self._images = np.stack([
                normalize_image(self.ds.image_bytes(n), size, 50_000_000)
                for n in self.table[self.spec.image_column]])
        return self._images

    def image_features(self) -> np.ndarray:
        """The image statistics of every row (computed once)."""
        if self._features is None:
            self._features = np.stack([image_features(im) for im in self.images()])
        return self._features

    def split_of(self) -> pd.Series | None:
        """Each row's part of the split, or None when no current split exists."""
        if self.splits is None:
            return None
        s = self.splits.set_index("id")["split"]
        return self.table[self.spec.id_column].map(s)


# ---- small statistics ------------------------------------------------------------------

def eta_squared(x: pd.Series, y: pd.Series) -> float:
    """Share of a numeric variable's variance explained by the class (correlation ratio²)."""
    ok = x.notna()
    x, y = x[ok].astype(float), y[ok]
    if len(x) < 2 or x.var() == 0:
        return 0.0
    mean = x.mean()
    between = sum(len(g) * (g.mean() - mean) ** 2 for _, g in x.groupby(y))
    return float(between / ((x - mean) ** 2).sum())


def cramers_v(a: pd.Series, b: pd.Series) -> float:
    """Cramér's V association between two categorical series (0: none, 1: one determines the other)."""
    table = pd.crosstab(a, b).to_numpy().astype(float)
    if table.shape[0] < 2 or table.shape[1] < 2:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) @ table.sum(0, keepdims=True) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def pct(x: float, digits: int = 0) -> str:
    """A share as a percentage string."""
    return f"{100 * x:.{digits}f}%"


def explode_multi(values: pd.Series) -> pd.Series:
    """A multi-valued column ('a|b') -> one row per value, index kept."""
    return values.fillna("").astype(str).str.split("|").explode().loc[lambda s: s != ""]


def html_table(frame: pd.DataFrame, max_rows: int = 40) -> str:
    """The first `max_rows` rows of a frame as an escaped HTML table."""
    return frame.head(max_rows).to_html(index=False, border=0, classes="t", float_format="%.3g",
                                        escape=True)


# ---- figures ---------------------------------------------------------------------------

def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (matplotlib is imported only when drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 80) -> str:
    """A matplotlib figure as base64 PNG, closing the figure."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def heatmap_figure(matrix: pd.DataFrame, title: str, fmt: str = "{:.0%}", cmap: str = "Blues",
                   width: float | None = None, annotate: bool = True, vmin=None, vmax=None):
    """A labelled heatmap of a matrix, cells annotated with `fmt`."""
    plt = pyplot()
    h, w = matrix.shape
    fig, ax = plt.subplots(figsize=(width or max(6, 0.55 * w + 2), max(2.5, 0.32 * h + 1.5)))
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(w), [str(c) for c in matrix.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(h), [str(i) for i in matrix.index], fontsize=8)
    if annotate and h * w <= 500:
        vals = matrix.to_numpy(dtype=float)
        hi = np.nanmax(np.abs(vals)) if vals.size else 1
        for i in range(h):
            for j in range(w):
                v = vals[i, j]
                if np.isfinite(v) and abs(v) >= 0.005:
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6,
                            color="white" if abs(v) > 0.6 * hi else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return fig


# ---- sections --------------------------------------------------------------------------

def overview_section(ctx: EdaContext) -> Section:
    """Rows per class: how balanced the target is."""
    plt = pyplot()
    spec, y = ctx.spec, ctx.y
    counts = y.value_counts().reindex(ctx.classes)
    n = len(y)
    rare = [c for c in counts.index if counts[c] < spec.min_class_count]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    colours = ["#c44" if c in rare else "#4a7bb7" for c in counts.index]
    ax.bar(counts.index, counts.to_numpy(), color=colours)
    ax.set_ylabel("rows")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.set_title(f"{spec.target}: rows per class (red: fewer than {spec.min_class_count}, "
                 "left out of modelling)", fontsize=10)
    kinds = pd.Series([f.kind.value for f in spec.fields]).value_counts()
    top, low = counts.index[0], counts.index[-1]
    s = Section("Target balance", figures=[(figure_png(fig), "rows per class")])
    s.shows.append(
        f"{n} rows, {len(counts)} classes of {spec.target}, {len(spec.fields)} input fields "
        f"({', '.join(f'{v} {k}' for k, v in kinds.items())}) and one image per row. The "
        f"largest class is {top} with {counts[top]} rows ({pct(counts[top] / n, 1)}), the "
        f"smallest {low} with {counts[low]}; the ratio largest/smallest is "
        f"{counts[top] / counts[low]:.0f}.")
    s.means.append(
        f"Predicting {top} for every row scores an accuracy of {counts[top] / n:.3f}: the "
        "floor any model must beat. With classes this unequal, accuracy hides the small "
        "classes; report macro-F1 next to it and weight classes in training.")
    if rare:
        s.means.append(
            f"{len(rare)} class(es) have fewer than {spec.min_class_count} rows ({', '.join(rare)}): "
            "they can be neither learned nor scored honestly and are left out of the splits.")
    return s


def missing_section(ctx: EdaContext) -> Section:
    """The share of rows missing each field, and what that means for imputation."""
    plt = pyplot()
    t, spec = ctx.table, ctx.spec
    miss = {}
    for f in spec.fields:
        col = t[f.name]
        empty = col.isna() | (col.astype(str).str.strip() == "") if f.kind == FieldKind.multi \
            else col.isna()
        miss[f.name] = empty
    share = pd.Series({k: float(v.mean()) for k, v in miss.items()}).sort_values(ascending=False)
    s = Section("Missing values")
    if share.max() == 0:
        s.shows.append("No input field has a missing value.")
        s.means.append("Imputation does not matter for this data; the Predictor still "
                       "accepts missing optional fields at serving time.")
        return s
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(share) + 1))
    ax.barh(share.index[::-1], share.to_numpy()[::-1], color="#888")
    ax.set_xlabel("share of rows missing")
    ax.set_title("missing (empty) values per field", fontsize=10)
    s.figures.append((figure_png(fig), "share of rows with no value, per field"))
    with_missing = share[share > 0]
    s.shows.append("Fields with missing values: " + ", ".join(
        f"{k} {pct(v, 1)}" for k, v in with_missing.items()) + ".")
    for name in with_missing.index[:3]:
        m = miss[name]
        if m.sum() < 3:
            continue
        dist_m = ctx.y[m].value_counts(normalize=True)
        dist_all = ctx.y.value_counts(normalize=True)
        lift = (dist_m / dist_all).dropna().sort_values(ascending=False)
        c = lift.index[0]
        s.shows.append(
            f"Rows missing {name} ({int(m.sum())}) are {pct(dist_m[c])} {c}, against "
            f"{pct(dist_all[c])} of all rows ({lift.iloc[0]:.1f}x).")
    s.means.append(
        "Where missingness goes with the class, the fact that a value is missing is itself a "
        "signal: the tree input keeps it as NaN and categorical encodings keep 'missing' apart "
        "from 'rare'; neural inputs get the training median, fitted on training rows only.")
    return s


def numeric_section(ctx: EdaContext) -> Section | None:
    """Distributions of the numeric fields per class (None without numeric fields)."""
    plt = pyplot()
    fields = [f.name for f in ctx.spec.fields_of(FieldKind.numeric)]
    if not fields:
        return None
    t, y, classes = ctx.table, ctx.y, ctx.classes
    eta = pd.Series({f: eta_squared(t[f], y) for f in fields}).sort_values(ascending=False)
    skew = pd.Series({f: float(t[f].astype(float).skew()) for f in fields})
    cols = 3
    rows = -(-len(fields) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.3 * rows), squeeze=False)
    for ax, f in zip(axes.ravel(), eta.index, strict=False):
        data = [t.loc[y == c, f].dropna().astype(float).to_numpy() for c in classes]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes, rotation=70, fontsize=7)
        log = skew[f] > 2 and (t[f].dropna() > 0).all()
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{f} (η² = {eta[f]:.2f}{', log axis' if log else ''})", fontsize=9)
    for ax in axes.ravel()[len(fields):]:
        ax.axis("off")
    fig.tight_layout()
    s = Section("Numeric fields by class", figures=[(figure_png(fig), "distribution of each "
                "numeric field per class (boxes: quartiles, whiskers: 1.5 IQR, outliers hidden)")])
    s.shows.append(
        "η² is the share of a field's variance explained by the class (0: no difference "
        "between classes, 1: the field alone decides the class). Ranked: " + ", ".join(
            f"{f} {v:.3f}" for f, v in eta.items()) + ".")
    skewed = skew[skew > 2]
    if len(skewed):
        s.shows.append("Strongly right-skewed (skewness > 2): " + ", ".join(
            f"{f} {v:.1f}" for f, v in skewed.items()) + "; drawn on a log axis.")
    s.means.append(
        f"The best single numeric field explains {pct(eta.iloc[0])} of its variance by class "
        f"({eta.index[0]}): classes overlap heavily in every field, so a model has to combine "
        "fields (and the image) rather than threshold one.")
    if len(skewed):
        s.means.append("Trees are indifferent to the skew; neural models get standardized "
                       "inputs, where a log of " + ", ".join(skewed.index) +
                       " would keep a few huge values from dominating.")
    return s


def categorical_section(ctx: EdaContext) -> Section | None:
    """Association of categorical and boolean fields with the target (None without such fields)."""
    fields = ctx.spec.fields_of(FieldKind.categorical) + ctx.spec.fields_of(FieldKind.boolean)
    if not fields:
        return None
    t, y, classes = ctx.table, ctx.y, ctx.classes
    split = ctx.split_of()
    s = Section("Categorical and boolean fields against the target")
    rows = []
    for f in fields:
        col = t[f.name].astype(object).where(t[f.name].notna(), "(missing)").astype(str)
        v = cramers_v(col, y)
        share = pd.crosstab(col, y, normalize="index").reindex(columns=classes, fill_value=0)
        counts = col.value_counts()
        share.index = [f"{i} (n={counts[i]})" for i in share.index]
        s.figures.append((figure_png(heatmap_figure(
            share, f"{f.name}: share of each class among rows with that value "
                   f"(Cramér's V = {v:.2f})")), f"{f.name} against {ctx.spec.target}"))
        purest = (pd.crosstab(col, y).pipe(lambda c: c[c.sum(1) >= 5])
                  .pipe(lambda c: (c.max(1) / c.sum(1)).sort_values(ascending=False)))
        example = ""
        if len(purest):
            val = purest.index[0]
            top = pd.crosstab(col, y).loc[val].idxmax()
            example = f"{val} -> {top} {pct(purest.iloc[0])}"
        acc = None
        if split is not None:
            tr, te = split == "train", split == "test"
            lookup = pd.crosstab(col[tr], y[tr]).idxmax(axis=1)
            fallback = y[tr].value_counts().idxmax()
            pred = col[te].map(lookup).fillna(fallback)
            acc = float((pred == y[te]).mean()) if te.any() else None
        rows.append({"field": f.name, "values": int(col.nunique()), "Cramér's V": round(v, 3),
                     "purest value (n>=5)": example,
                     "test accuracy of value->majority class": None if acc is None else round(acc, 3)})
    frame = pd.DataFrame(rows).sort_values("Cramér's V", ascending=False)
    s.tables.append(html_table(frame))
    best_field, best_v = frame.iloc[0]["field"], frame.iloc[0]["Cramér's V"]
    s.shows.append(
        "Cramér's V measures association with the target (0: none, 1: the field determines "
        f"the class). Strongest: {best_field} (V = {best_v:.2f}).")
    if split is not None:
        s.shows.append("The last column fits 'each value -> its most common class' on the "
                       "train split and scores it on the test split: what the field alone is "
                       "worth, measured honestly.")
    s.means.append("A field with a moderate V carries real but partial information; the model "
                   "should see it one-hot (trees) or embedded, with rare values pooled.")
    return s


def multi_section(ctx: EdaContext) -> Section | None:
    """How labels of multi-valued fields spread over classes (None without such fields)."""
    fields = ctx.spec.fields_of(FieldKind.multi)
    if not fields:
        return None
    t, y, classes = ctx.table, ctx.y, ctx.classes
    s = Section("Multi-valued fields against the target")
    rows = []
    for f in fields:
        ex = explode_multi(t[f.name])
        labels = y.loc[ex.index]
        counts = ex.value_counts()
        per_row = t[f.name].fillna("").astype(str).map(lambda v: len([p for p in v.split("|") if p]))
        by_val = pd.crosstab(ex.to_numpy(), labels.to_numpy())
        purity = by_val.max(1) / by_val.sum(1)
        pure = purity[(by_val.sum(1) >= 3) & (purity >= 0.9)]
        covered = ex[ex.isin(pure.index)].index.unique()
        top = counts.index[:25]
        share = (by_val.loc[top].div(by_val.loc[top].sum(1), axis=0)
                 .reindex(columns=classes, fill_value=0))
        share.index = [f"{v} (n={counts[v]})" for v in top]
        s.figures.append((figure_png(heatmap_figure(
            share, f"{f.name}: class shares among rows with each of the {len(top)} most "
                   "common values")), f"{f.name} against {ctx.spec.target}"))
        top_pure = by_val.loc[pure.index].sum(1).sort_values(ascending=False).index[:6]
        examples = ", ".join(f"{v} -> {by_val.loc[v].idxmax()} ({by_val.loc[v].sum()})"
                             for v in top_pure)
        rows.append({"field": f.name, "distinct values": len(counts),
                     "values seen once": int((counts == 1).sum()),
                     "values per row (mean)": round(float(per_row.mean()), 2),
                     "values >=90% one class (n>=3)": len(pure),
                     "rows with such a value": pct(len(covered) / len(t)),
                     "largest such values": examples})
    frame = pd.DataFrame(rows)
    s.tables.append(html_table(frame))
    worst = frame.sort_values("values >=90% one class (n>=3)", ascending=False).iloc[0]
    s.shows.append(
        f"{worst['field']} has {worst['values >=90% one class (n>=3)']} values that belong "
        f"(>=90%) to one class, present in {worst['rows with such a value']} of the rows; "
        f"{worst['values seen once']} of its {worst['distinct values']} values occur once.")
    s.means.append(
        "Values that nearly name the class are legitimate inputs, but many are shared only "
        f"within a {ctx.spec.words.group_noun} (`{ctx.spec.group_column}`): a random split lets "
        "the model memorise them across train and test. Grouped splits keep the estimate "
        "honest; values seen once cannot be learned and are pooled by the encoder (min_count).")
    return s


def correlation_section(ctx: EdaContext) -> Section | None:
    """Rank correlations between numeric and boolean fields (None with fewer than two)."""
    fields = [f.name for f in ctx.spec.fields if f.kind in (FieldKind.numeric, FieldKind.boolean)]
    if len(fields) < 2:
        return None
    corr = ctx.table[fields].astype(float).corr(method="spearman")
    fig = heatmap_figure(corr, "Spearman correlation between numeric fields", fmt="{:.2f}",
                         cmap="RdBu_r", vmin=-1, vmax=1)
    pairs = [(a, b, corr.loc[a, b]) for i, a in enumerate(fields) for b in fields[i + 1:]
             if np.isfinite(corr.loc[a, b])]
    pairs.sort(key=lambda p: -abs(p[2]))
    s = Section("Correlations", figures=[(figure_png(fig), "rank correlation of numeric fields")])
    s.shows.append("Strongest pairs: " + ", ".join(f"{a}/{b} {r:+.2f}" for a, b, r in pairs[:4])
                   + ".")
    strong = [p for p in pairs if abs(p[2]) >= 0.7]
    s.means.append(
        f"{len(strong)} pair(s) have |ρ| >= 0.7. Correlated fields share credit in importance "
        "plots and explanations (read their contributions together); trees and regularized "
        "models cope with the redundancy, so nothing needs dropping.")
    return s


def image_section(ctx: EdaContext) -> Section:
    """Object sizes in the normalized images, and colour statistics per class."""
    plt = pyplot()
    spec, y, classes = ctx.spec, ctx.y, ctx.classes
    size = spec.image_size
    feats = pd.DataFrame(ctx.image_features(), columns=IMAGE_FEATURE_NAMES)
    side = np.maximum(feats["img_bbox_w"], feats["img_bbox_h"]) * size
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
    axes[0].hist(side, bins=range(0, size + 5, 4), color="#4a7bb7")
    axes[0].set_xlabel("largest side of the opaque box (px)")
    axes[0].set_title(f"object size in the normalized {size}x{size} image", fontsize=10)
    axes[1].hist(feats["img_area"], bins=30, color="#7a7")
    axes[1].set_xlabel("share of the canvas that is opaque")
    axes[1].set_title("opaque area", fontsize=10)
    s = Section("Images: size and colour")
    s.figures.append((figure_png(fig), "object size and area after normalization"))
    small = float((side <= size * 2 / 3).mean())
    full = float((side >= size - 1).mean())
    s.shows.append(
        f"After cropping to the opaque box and centring, the median object is "
        f"{np.median(feats['img_bbox_w'] * size):.0f} x {np.median(feats['img_bbox_h'] * size):.0f}"
        f" px; {pct(small)} fit in {size * 2 // 3} px and {pct(full)} fill the {size} px "
        "canvas (those were scaled down to fit, or are exactly that large). The object covers "
        f"a median {pct(float(feats['img_area'].median()))} of the canvas.")
    if ctx.ds.views is not None and len(ctx.ds.views):
        vc = ctx.ds.views["view"].value_counts()
        s.shows.append("Extra views per row are stored too: " + ", ".join(
            f"{k} {v}" for k, v in vc.items()) + " images (augmentation material; never "
            "split apart from their row).")
    hue = feats[[f"img_hue_{i:02d}" for i in range(HUE_BINS)]].copy()
    hue.columns = HUE_NAMES
    hue["grey"] = feats["img_frac_grey"]
    by_class = hue.groupby(y.to_numpy()).mean().reindex(classes)
    overall = hue.mean()
    s.figures.append((figure_png(heatmap_figure(
        by_class, f"mean share of opaque {ctx.spec.words.image_noun} pixels in each hue "
        "(grey: unsaturated)",
        cmap="magma_r")), "colour per class"))
    lift = (by_class / overall.replace(0, np.nan)).drop(columns="grey")
    notes = []
    for c in classes[:8]:
        h = lift.loc[c].idxmax()
        notes.append(f"{c}: {h} {pct(by_class.loc[c, h])} vs {pct(overall[h])} overall")
    s.shows.append("The most over-represented hue of the largest classes: " + "; ".join(notes)
                   + ".")
    rgb = feats[["img_mean_r", "img_mean_g", "img_mean_b"]].groupby(y.to_numpy()).mean()
    fig, ax = plt.subplots(figsize=(9, 1.4))
    for i, c in enumerate(classes):
        ax.add_patch(plt.Rectangle((i, 0), 0.9, 1, color=rgb.loc[c].clip(0, 1).to_numpy()))
    ax.set_xlim(0, len(classes))
    ax.set_ylim(0, 1)
    ax.set_xticks(np.arange(len(classes)) + 0.45, classes, rotation=60, fontsize=8)
    ax.set_yticks([])
    ax.set_title("mean colour of the opaque pixels per class", fontsize=10)
    s.figures.append((figure_png(fig), f"mean {ctx.spec.words.image_noun} colour per class"))
    eta = pd.Series({n: eta_squared(feats[n], pd.Series(y.to_numpy())) for n in feats.columns})
    eta = eta.sort_values(ascending=False)
    s.shows.append("Hand-made image statistics that separate classes best (η²): " + ", ".join(
        f"{k} {v:.3f}" for k, v in eta.head(5).items()) + ".")
    s.means.append(
        f"Colour carries signal for some classes, but no single image statistic explains more "
        f"than {pct(eta.iloc[0])} of its variance by class: the image helps most combined with "
        "the table, and a learned image model has to find shape as well as colour.")
    s.means.append(
        f"{pct(small)} of objects fit in {size * 2 // 3} px: a CNN at two-thirds of the stored "
        f"size sees those unscaled for {pct((2 / 3) ** 2)} of the pixels per image; store the "
        "full size and choose the training size by measurement.")
    return s


def mosaic_section(ctx: EdaContext, per_class: int = 10, thumb: int = 64) -> Section:
    """A grid of `per_class` random images of every class."""
    plt = pyplot()

    y, classes, images = ctx.y.to_numpy(), ctx.classes, ctx.images()
    grid = np.full((len(classes) * thumb, per_class * thumb, 3), 255, dtype=np.uint8)
    rng = np.random.default_rng(0)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        for k, i in enumerate(pick):
            im = Image.fromarray(images[i], "RGBA").resize((thumb, thumb), Image.Resampling.NEAREST)
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            tile = np.asarray(Image.alpha_composite(bg, im).convert("RGB"))
            grid[r * thumb:(r + 1) * thumb, k * thumb:(k + 1) * thumb] = tile
    fig, ax = plt.subplots(figsize=(per_class * 0.9, len(classes) * 0.9))
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks(np.arange(len(classes)) * thumb + thumb / 2, classes, fontsize=9)
    ax.set_xticks([])
    ax.set_title(f"up to {per_class} random images per class (seed 0)", fontsize=10)
    s = Section("Images per class",
                figures=[(figure_png(fig, dpi=72), f"{ctx.spec.words.image_noun} mosaic")])
    s.shows.append("Random images of each class, as the models see them (cropped, centred).")
    s.means.append("Within a class, shapes and palettes vary widely while some classes share "
                   "palettes: the image alone cannot be expected to separate every class.")
    return s


def split_section(ctx: EdaContext, pairs_shown: int = 8) -> Section:
    """The split's audit: group and look-alike separation, class shares, closest image pairs."""
    plt = pyplot()
    s = Section("Split audit")
    spec, t = ctx.spec, ctx.table
    g = t[spec.group_column]
    sizes = g.value_counts()
    mixed = t.groupby(spec.group_column)[spec.target].nunique()
    fig, ax = plt.subplots(figsize=(6, 2.8))
    dist = sizes.value_counts().sort_index()
    ax.bar(dist.index.astype(str), dist.to_numpy(), color="#4a7bb7")
    ax.set_xlabel(f"rows per {spec.group_column}")
    ax.set_ylabel("groups")
    ax.set_title("group sizes", fontsize=10)
    s.figures.append((figure_png(fig), "how many groups have 1, 2, 3... rows"))
    s.shows.append(
        f"{len(sizes)} groups ({spec.group_column}) for {len(t)} rows: {int((sizes == 1).sum())} "
        f"singletons, the largest has {sizes.iloc[0]} rows; {int((mixed > 1).sum())} groups "
        "mix classes.")
    if ctx.audit is None:
        s.shows.append("No split audit yet: run `modalfuse data split` and rebuild this report.")
    else:
        a = ctx.audit
        per = pd.DataFrame([{"split": k, **v} for k, v in a["per_split"].items()])
        s.tables.append(html_table(per))
        checks = pd.DataFrame([{
            "check": c["name"], "blocking": c["blocking"], "passed": c["passed"],
            "summary": json.dumps({k: v for k, v in c["summary"].items() if k != "counts"},
                                  default=str)[:300]} for c in a["checks"]])
        s.tables.append(html_table(checks))
        failed = checks[~checks["passed"]]
        s.shows.append(
            f"Split made with seed {a['params'].get('seed')}, test share "
            f"{a['params'].get('test_size')}, {a['params'].get('n_folds')} grouped CV folds on "
            f"train. {len(checks) - len(failed)} of {len(checks)} audit checks pass" +
            (f"; failing: {', '.join(failed['check'])}" if len(failed) else "") + ".")
    # Near-duplicate images: the closest pairs by perceptual hash, whatever their split.
    bits = np.stack([phash_bits(im) for im in ctx.images()])
    dist_m = hamming_matrix(bits)
    iu = np.triu_indices(len(dist_m), 1)
    d = dist_m[iu]
    order = np.argsort(d, kind="stable")[:pairs_shown]
    threshold = (ctx.audit or {}).get("params", {}).get("phash_threshold", PHASH_THRESHOLD)
    ids = t[spec.id_column].to_numpy()
    y = ctx.y.to_numpy()
    gv = g.to_numpy()
    split = ctx.split_of()
    fig, axes = plt.subplots(2, len(order), figsize=(1.6 * len(order), 3.8), squeeze=False)
    rows = []
    for k, o in enumerate(order):
        i, j = iu[0][o], iu[1][o]
        for r, idx in enumerate((i, j)):
            axes[r, k].imshow(ctx.images()[idx], interpolation="nearest")
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
            axes[r, k].set_xlabel(f"{ids[idx]} {y[idx]}", fontsize=7)
        axes[0, k].set_title(f"d = {d[o]}", fontsize=8)
        rows.append({"id a": ids[i], "id b": ids[j], "hamming": int(d[o]),
                     "same class": y[i] == y[j], "same group": gv[i] == gv[j],
                     "splits": "" if split is None else f"{split.iloc[i]}/{split.iloc[j]}"})
    s.figures.append((figure_png(fig), f"the {len(order)} closest image pairs (64-bit pHash)"))
    near = pd.DataFrame(rows)
    s.tables.append(html_table(near))
    within = int((d <= threshold).sum())
    s.shows.append(
        f"Closest pair of images: {int(d.min())} bits apart (of 64); {within} pair(s) within "
        f"the near-duplicate threshold of {threshold} bits. Of the {len(near)} closest pairs, "
        f"{int((~near['same class']).sum())} cross classes and {int((~near['same group']).sum())} "
        "cross groups.")
    s.means.append(
        "Families (groups) never straddle train and test, nor CV folds, and near-identical "
        "images are merged into one group before splitting: the test score measures "
        "generalisation to new families, not recall of siblings. Close pairs across classes "
        "are look-alikes the image model must not be blamed for confusing.")
    return s


# ---- the report ------------------------------------------------------------------------

GENERIC: list[Callable[[EdaContext], Section | None]] = [
    overview_section, missing_section, numeric_section, categorical_section, multi_section,
    correlation_section, image_section, mosaic_section, split_section,
]


def dataset_findings(ctx: EdaContext) -> list[Section]:
    """The sections a dataset adds for itself (FINDINGS maps its name to their function)."""
    target = FINDINGS.get(ctx.spec.name)
    if target is None:
        return []
    module, func = target.split(":")
    return list(getattr(importlib.import_module(module), func)(ctx))


def build_sections(ds: Dataset, progress: Callable[[str], None] | None = None) -> list[Section]:
    """Every section of the EDA report of `ds`, calling `progress` with each title."""
    audit_path, splits_path = ds.root / AUDIT_FILE, ds.root / SPLITS_FILE
    audit = json.loads(audit_path.read_text()) if audit_path.exists() else None
    if audit is not None and audit.get("dataset_version") != ds.version:
        audit = None  # made for another version of the data: say so rather than mislead
    splits = pd.read_parquet(splits_path) if audit is not None and splits_path.exists() else None
    ctx = EdaContext(ds, audit, splits)
    sections = []
    for make in [*GENERIC, dataset_findings]:
        if progress is not None:
            progress(make.__name__)
        out = make(ctx)
        if out is None:
            continue
        sections += out if isinstance(out, list) else [out]
    return sections


CSS = """
body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.shows{background:#f6f8fa;padding:.6em 1em;border-left:4px solid #4a7bb7}
.means{background:#fbf7ee;padding:.6em 1em;border-left:4px solid #d9a400}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#666;font-size:.85em}
table.t{border-collapse:collapse;font-size:.85em;margin:1em 0}
table.t td,table.t th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
nav a{margin-right:1em}
"""


def render_html(ds: Dataset, sections: list[Section]) -> str:
    """The report as one self-contained HTML page (figures inlined)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>"
             f"<title>EDA: {esc(ds.spec.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Exploratory data analysis: {esc(ds.spec.name)}</h1>",
             f"<p>{esc(ds.spec.description)}</p>",
             f"<p>Dataset version <code>{esc(ds.version)}</code>, {len(ds.table)} rows. Written "
             f"by <code>modalfuse eda --dataset {esc(ds.spec.name)}</code> on "
             f"{datetime.now(UTC).date().isoformat()}; every number below is computed from the "
             "data by that command.</p><nav>"]
    parts += [f"<a href='#s{i}'>{esc(s.title)}</a>" for i, s in enumerate(sections)]
    parts.append("</nav>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{esc(s.title)}</h2>")
        if s.shows:
            parts.append("<div class='shows'><b>What it shows.</b> " +
                         " ".join(f"<p>{esc(p)}</p>" for p in s.shows) + "</div>")
        for png, caption in s.figures:
            parts.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{png}'>"
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        parts += s.tables
        if s.means:
            parts.append("<div class='means'><b>What it means for modelling.</b> " +
                         " ".join(f"<p>{esc(p)}</p>" for p in s.means) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(ds: Dataset, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Build every section of `ds` and write the self-contained HTML report to `out`."""
    html_text = render_html(ds, build_sections(ds, progress))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_text, encoding="utf-8")
    return out


def report_summary(path: Path) -> dict[str, Any]:
    """Size, figure count and section count of a written report."""
    text = Path(path).read_text(encoding="utf-8")
    return {"bytes": len(text.encode()), "figures": text.count("data:image/png;base64,"),
            "sections": text.count("<h2 ")}
