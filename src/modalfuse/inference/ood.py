"""Out-of-distribution flags: is this image, or this record, unlike what the model learned from?

A model scores anything it is given; these detectors say when it should not be trusted.

* **Image.** A vector of image statistics (the colour/shape features every model reads,
  plus four that separate pixel art from everything else: semi-transparent pixels, palette
  size, flat neighbours, Laplacian energy) and its Mahalanobis distance to the training
  images, on standardized features with a shrunk covariance. The threshold is the
  conformal quantile of *out-of-fold* distances of the training images (each scored by a
  detector fitted without its fold) at the stated false-alarm rate, so an in-distribution
  image is flagged with probability at most that rate.
* **Fields.** Rules, not a threshold: a number outside the range seen in training, a
  category or label never seen in training. Each flag says which field and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.errors import InvalidInput
from modalfuse.spec import DatasetSpec, FieldKind

DEFAULT_FALSE_ALARM = 0.05
EXTRA_NAMES = ["ood_semi_alpha", "ood_palette", "ood_flat", "ood_laplacian"]
SHRINKAGE = 0.2  # weight of the diagonal in the covariance: 30-odd features, ~500 images


def pixel_art_stats(images: np.ndarray) -> np.ndarray:
    """(n, 4) statistics of normalized RGBA images that tell pixel art from photos, smoothed
    or compressed images: share of semi-transparent pixels, log palette size per opaque
    pixel, share of opaque neighbours with identical colour, mean Laplacian of luminance."""
    out = np.zeros((len(images), len(EXTRA_NAMES)))
    for i, im in enumerate(images):
        a = im[..., 3]
        opaque = a > 0
        n = int(opaque.sum())
        if n == 0:
            continue
        rgb = im[..., :3].astype(np.int32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        both = opaque[:, 1:] & opaque[:, :-1]
        same = (packed[:, 1:] == packed[:, :-1]) & both
        lum = rgb @ np.array([299, 587, 114]) / 1000.0
        lap = np.abs(4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1]
                     - lum[1:-1, :-2] - lum[1:-1, 2:])
        inner = opaque[1:-1, 1:-1]
        out[i] = [((a > 0) & (a < 255)).sum() / n,
                  math.log(len(np.unique(packed[opaque]))) / math.log(n + 1),
                  same.sum() / max(1, both.sum()),
                  float(lap[inner].mean() / 255.0) if inner.any() else 0.0]
    return out


def image_ood_features(image_stats: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The detector's input: the models' image statistics plus the pixel-art statistics."""
    return np.hstack([image_stats, pixel_art_stats(images)])


def conformal_threshold(held_out: np.ndarray, false_alarm: float) -> float:
    """The ceil((n + 1)(1 - rate))-th smallest held-out score: an exchangeable new
    in-distribution score exceeds it with probability at most `rate`."""
    s = np.sort(held_out)
    k = math.ceil((len(s) + 1) * (1 - false_alarm))
    return float(s[k - 1]) if k <= len(s) else math.inf


@dataclass
class ImageOOD:
    """Mahalanobis distance of an image's statistics to the training images, and its threshold."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    threshold: float = math.inf
    false_alarm: float = DEFAULT_FALSE_ALARM

    @classmethod
    def fit(cls, features: np.ndarray) -> ImageOOD:
        """Fit the distance on training images' features (threshold set by `calibrate`)."""
        if len(features) < 3:
            raise InvalidInput("the image OOD detector needs at least 3 training images")
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        z = (features - mean) / scale
        cov = np.cov(z, rowvar=False)
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(cov))
        return cls(mean, scale, np.linalg.inv(cov))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each row to the training images (larger is stranger)."""
        z = (features - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))

    def calibrate(self, held_out_scores: np.ndarray, false_alarm: float) -> ImageOOD:
        """Set the threshold from out-of-fold scores of training images; returns self."""
        self.threshold = conformal_threshold(held_out_scores, false_alarm)
        self.false_alarm = false_alarm
        return self

    def to_dict(self) -> dict:
        """The detector as JSON-ready data (what the bundle stores)."""
        return {"features": "image statistics + " + ", ".join(EXTRA_NAMES),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "precision": self.precision.tolist(), "threshold": self.threshold,
                "false_alarm": self.false_alarm}

    @classmethod
    def from_dict(cls, d: dict) -> ImageOOD:
        """The detector `to_dict` wrote."""
        return cls(np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["precision"]),
                   float(d["threshold"]), float(d["false_alarm"]))


@dataclass
class FieldOOD:
    """The ranges and values the training rows had, per field; a record outside them is flagged."""

    ranges: dict[str, tuple[float, float]]
    seen: dict[str, set[str]]

    @classmethod
    def fit(cls, spec: DatasetSpec, frame: pd.DataFrame) -> FieldOOD:
        """Record the training rows' numeric ranges and categories (parsed records' frame)."""
        ranges: dict[str, tuple[float, float]] = {}
        seen: dict[str, set[str]] = {}
        for f in spec.fields:
            col = frame[f.name]
            if f.kind == FieldKind.numeric:
                vals = pd.to_numeric(col, errors="coerce").dropna()
                if len(vals):
                    ranges[f.name] = (float(vals.min()), float(vals.max()))
            elif f.kind == FieldKind.categorical:
                seen[f.name] = {str(v) for v in col if v is not None}
            elif f.kind == FieldKind.multi:
                seen[f.name] = {s for v in col if v for s in str(v).split("|")}
        return cls(ranges, seen)

    def reasons(self, record: dict[str, Any]) -> dict[str, str]:
        """field -> why a parsed record's value is outside the training data (empty: none)."""
        out: dict[str, str] = {}
        for name, (lo, hi) in self.ranges.items():
            v = record.get(name)
            if v is not None and not (lo <= float(v) <= hi):
                out[name] = f"{v:g} is outside the training range [{lo:g}, {hi:g}]"
        for name, values in self.seen.items():
            v = record.get(name)
            if v is None or v == "":
                continue
            new = sorted(set(str(v).split("|")) - values)
            if new:
                out[name] = f"{', '.join(map(repr, new))} never seen in training"
        return out

    def to_dict(self) -> dict:
        """The ranges and values as JSON-ready data (what the bundle stores)."""
        return {"ranges": {k: list(v) for k, v in self.ranges.items()},
                "seen": {k: sorted(v) for k, v in self.seen.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> FieldOOD:
        """The checks `to_dict` wrote."""
        return cls({k: (float(a), float(b)) for k, (a, b) in d["ranges"].items()},
                   {k: set(v) for k, v in d["seen"].items()})


def auroc(inside: Sequence[float] | np.ndarray, outside: Sequence[float] | np.ndarray) -> float:
    """Probability that an outside score exceeds an inside one (ties count half)."""
    a, b = np.asarray(inside, dtype=float), np.asarray(outside, dtype=float)
    if not len(a) or not len(b):
        return float("nan")
    ranks = pd.Series(np.concatenate([a, b])).rank().to_numpy()
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))
