"""Leakage audit of a split. Every check shares one contract: per-row scores, a flag, a summary.

Adding a check is adding a module to `data/checks/` that registers its class; `audit_split`
runs them all and the split fails when a blocking check flags anything. The checks read a
`SplitContext`: the table with its split, the image hashes, the split's parameters and how
near-duplicate images merged the groups (`GroupMerging`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from modalfuse.spec import DatasetSpec

# Near-duplicate threshold on a 64-bit pHash of the cropped front image. Hashing the
# padded canvas instead makes small sprites collide (the blob's size dominates the DCT):
# on the crop, distinct species of the built-in data are >= 12 bits apart, a shiny and a
# normal sprite of one species a few bits. 8 sits between the two.
PHASH_THRESHOLD = 8


def plain(value: object) -> object:
    """A table value as JSON writes it: numpy scalars become their Python value (an int id
    stays an int, a string id stays a string)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class MergeLink:
    """A pair of near-identical images (rows `row_a` and `row_b` of the table, `bits` apart)
    that joined their two groups into one, or whose joining a size cap refused."""

    row_a: int
    row_b: int
    bits: int


@dataclass
class GroupMerging:
    """How near-duplicate images merged the dataset's groups before the split.

    `labels` is each row's merged group; `links` are the image pairs that joined two groups, in
    the order they were made (one per joined group, so they show the chain); `refused` are the
    pairs a size cap kept apart (`max_group_share`, None = no cap).
    """

    labels: np.ndarray
    links: list[MergeLink]
    refused: list[MergeLink]
    threshold: int
    max_group_share: float | None = None


@dataclass
class CheckResult:
    """What one audit check found: whether it passed, a summary, and per-row scores and flags."""

    name: str
    blocking: bool
    passed: bool
    summary: dict
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-row score and flag

    def to_dict(self) -> dict:
        """The result without its rows, as the split audit JSON records it."""
        return {"name": self.name, "blocking": self.blocking, "passed": self.passed,
                "summary": self.summary}


@dataclass
class SplitContext:
    """What every check reads: the spec, the table with its split and fold, image hashes, the
    split's parameters (test_size, phash_threshold, max_group_share, ...) and the merging."""

    spec: DatasetSpec
    table: pd.DataFrame  # with columns split ("train"/"test"/"excluded") and fold
    phash: np.ndarray | None  # (n, 64) bool bits per row, aligned with table
    params: dict = field(default_factory=dict)  # as the split audit records them
    merging: GroupMerging | None = None  # row positions refer to `table`


class Check:
    """The contract of a leakage check: `run` a split context, return a CheckResult.

    How to add one: a module in `data/checks/` with a subclass that sets `name` (and
    `blocking = False` for a check that only reports), implements `run`, and is decorated
    with `@register_check`. Nothing else changes.
    """

    name: ClassVar[str]
    blocking: ClassVar[bool] = True
    order: ClassVar[int] = 100  # position in the audit report

    def run(self, ctx: SplitContext) -> CheckResult:
        """Score every row of the split and say whether the check passes."""
        raise NotImplementedError


CHECKS: list[type[Check]] = []  # filled by `register_check`, in `order`
_loaded = False


def register_check(cls: type[Check]) -> type[Check]:
    """Class decorator: add a check to the audit every split runs (kept in `order`)."""
    if cls not in CHECKS:
        CHECKS.append(cls)
        CHECKS.sort(key=lambda c: (c.order, c.name))
    return cls


def load_checks() -> list[type[Check]]:
    """Import every module of `data/checks/` once (each registers its check); return CHECKS."""
    global _loaded
    if not _loaded:
        package = importlib.import_module("modalfuse.data.checks")
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        _loaded = True
    return CHECKS


def phash_bits(rgba: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash (DCT) of the opaque box of an RGBA image, on mid grey."""
    import imagehash

    img = Image.fromarray(rgba, "RGBA")
    bbox = img.getchannel("A").getbbox()
    if bbox is not None:
        img = img.crop(bbox)
    bg = Image.new("RGBA", img.size, (128, 128, 128, 255))
    return np.asarray(imagehash.phash(Image.alpha_composite(bg, img).convert("RGB")).hash).ravel()


def hamming_matrix(bits: np.ndarray) -> np.ndarray:
    """(n, n) Hamming distances between rows of (n, bits) boolean hashes.

    Counted as ones-against-zeros products, so memory is n * n, not n * n * bits; the sums are
    small whole numbers, exact in float32.
    """
    b = bits.astype(np.float32)
    d = b @ (1 - b).T + (1 - b) @ b.T
    return np.rint(d).astype(np.int64)


def describe_merged_groups(ctx: SplitContext, top: int = 5, max_links: int = 10,
                           max_names: int = 20, labels: list | None = None) -> list[dict]:
    """The largest groups after near-duplicate merging (or the groups `labels` names), each with
    its rows, share of all rows, the original groups it joined, its side of the split, and the
    first `max_links` image pairs that chained it.

    `span_bits` is the widest Hamming distance between two images the links touch (None for a
    group nothing was merged into): above the threshold, the chain put together images that are
    not near-duplicates of each other.
    """
    if ctx.merging is None:
        return []
    t, spec, m = ctx.table, ctx.spec, ctx.merging
    ids, groups = t[spec.id_column].to_numpy(), t[spec.group_column].to_numpy()
    split = t["split"].to_numpy()
    sizes = pd.Series(m.labels).value_counts()
    order = sorted(sizes.index, key=lambda k: (-sizes[k], k))
    wanted = None if labels is None else set(labels)
    chosen = order[:top] if wanted is None else [k for k in order if k in wanted]
    out = []
    for k in chosen:
        rows = np.flatnonzero(m.labels == k)
        links = [link for link in m.links if m.labels[link.row_a] == k]
        names = pd.unique(groups[rows])
        linked = sorted({r for x in links for r in (x.row_a, x.row_b)})
        span = (int(hamming_matrix(ctx.phash[linked]).max())
                if ctx.phash is not None and linked else None)
        out.append({
            "rows": len(rows),
            "share": len(rows) / len(t),
            "original_groups": len(names),
            "group_names": [str(x) for x in names[:max_names]],
            "side": "+".join(sorted(set(split[rows]))),
            "span_bits": span,
            "links_total": len(links),
            "links": [{"ids": [plain(ids[x.row_a]), plain(ids[x.row_b])],
                       "groups": [str(groups[x.row_a]), str(groups[x.row_b])], "bits": x.bits}
                      for x in links[:max_links]],
        })
    return out


def audit_split(ctx: SplitContext, checks: list[Check] | None = None) -> list[CheckResult]:
    """Run the given checks (every registered one by default) on a split."""
    return [c.run(ctx) for c in (checks or [cls() for cls in load_checks()])]
