"""Leakage audit of a split. Every check shares one contract: per-row scores, a flag, a summary.

Adding a check is adding a module to `data/checks/` that registers its class; `audit_split`
runs them all and the split fails when a blocking check flags anything.
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
    """What every check reads: the spec, the table with its split and fold, and image hashes."""

    spec: DatasetSpec
    table: pd.DataFrame  # with columns split ("train"/"test"/"excluded") and fold
    phash: np.ndarray | None  # (n, 64) bool bits per row, aligned with table


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
    """(n, n) Hamming distances between rows of (n, bits) boolean hashes."""
    b = bits.astype(np.int32)
    return (b[:, None, :] != b[None, :, :]).sum(axis=2)


def audit_split(ctx: SplitContext, checks: list[Check] | None = None) -> list[CheckResult]:
    """Run the given checks (every registered one by default) on a split."""
    return [c.run(ctx) for c in (checks or [cls() for cls in load_checks()])]
