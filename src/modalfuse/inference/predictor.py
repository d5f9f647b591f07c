"""The Predictor: the one inference path from raw records (fields + image bytes) to probabilities.

Offline evaluation, `modalfuse predict`, the HTTP API, the Ray batch job and the UI all
call it, and nothing else re-implements preprocessing: this is how training-serving skew
is kept out. Bad rows become error entries; they never take the other rows down.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from modalfuse.errors import InvalidInput
from modalfuse.features.image import (
    ImageError,
    load_first_frame,
    open_image_header,
    to_square_rgba,
)
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.features.tabular import RecordError, has_no_fields, parse_record, records_columns
from modalfuse.inference.bundle import ModelBundle, load_bundle
from modalfuse.inference.companions import BOTH, FIELDS, IMAGE, USED
from modalfuse.inference.conformal import check_coverage
from modalfuse.inference.ood import image_ood_features
from modalfuse.models.registry import Model
from modalfuse.spec import DatasetSpec, FieldKind

log = logging.getLogger("modalfuse.predict")
NONE = "none"  # a row with neither an image nor a field value: always an error row

class PredictionInputError(InvalidInput):
    """One or more rows cannot be scored; `errors` maps row index -> {field: message}."""

    def __init__(self, errors: dict[int, dict[str, str]]):
        self.errors = errors
        first = next(iter(errors.items()))
        super().__init__(f"{len(errors)} row(s) invalid; row {first[0]}: {first[1]}")


class PixelBudgetError(InvalidInput):
    """A call's images declare more pixels in all than it may decode; nothing was decoded."""

    def __init__(self, total: int, n_images: int, limit: int):
        self.total, self.n_images, self.limit = total, n_images, limit
        super().__init__(
            f"the {n_images} images of this request have {total} pixels in all; the limit is "
            f"{limit} pixels per request: send fewer or smaller images")


@dataclass
class Prepared:
    """Rows after validation: the indices that passed, their features, and errors of the rest.

    `modes` says which modalities each valid row has (`both`, `fields`, `image`); a row
    without an image has NaN image statistics and a transparent canvas that no model of its
    case reads. `field_flags` are the OOD reasons of each valid row's fields, and
    `image_ood` the image OOD score of each valid row (NaN without an image or a detector).
    """

    valid: list[int]  # row indices that passed validation, in order
    batch: FeatureBatch | None
    errors: dict[int, dict[str, str]]
    modes: list[str] = field(default_factory=list)
    field_flags: list[dict[str, str]] = field(default_factory=list)
    image_ood: np.ndarray | None = None
    image_threshold: float = math.inf

    def rows_of(self, mode: str) -> np.ndarray:
        """Positions (within `valid`) of the rows of one modality case."""
        return np.array([i for i, m in enumerate(self.modes) if m == mode], dtype=int)

    def image_flags(self) -> list[bool | None]:
        """Per valid row: is its image flagged out of distribution (None: no image scored)."""
        scores = self.image_ood if self.image_ood is not None else np.full(len(self.valid), np.nan)
        return [None if np.isnan(v) else bool(v > self.image_threshold) for v in scores]

    def field_flagged(self) -> list[bool | None]:
        """Per valid row: are any of its fields flagged (None: the row had no fields)."""
        return [None if m == IMAGE else bool(f)
                for m, f in zip(self.modes, self.field_flags or [{}] * len(self.modes), strict=True)]


@dataclass
class PredictionEvent:
    """One scored call, as observers see it: raw inputs, features, outputs, latency."""

    records: Sequence[dict[str, Any]]
    prepared: Prepared
    proba: np.ndarray  # rows of prepared.valid
    labels: list[str]
    model_version: str
    latency_s: float
    images: Sequence[bytes | None] = ()  # the raw image bytes, aligned with records
    prediction_ids: Sequence[str] | None = None  # the ids the caller gave each row, if any


class Predictor:
    """The one inference path: raw records and image bytes in, probabilities or per-row errors out.

    Built from one bundle and shared by evaluation, batch scoring, the API and the UI;
    observers see every scored call.
    """

    def __init__(self, bundle: ModelBundle, max_image_bytes: int = 2_000_000,
                 max_image_pixels: int = 4_000_000):
        self.bundle = bundle
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        # Called after every scored call (prediction log, metrics); must be cheap and never raise.
        self.observers: list[Callable[[PredictionEvent], None]] = []

    @classmethod
    def from_path(cls, path: Path | str, **limits: int) -> Predictor:
        """The Predictor of the bundle at `path`, with optional image limits."""
        return cls(load_bundle(Path(path)), **limits)

    @property
    def spec(self) -> DatasetSpec:
        """The spec of the data the model was trained on."""
        return self.bundle.spec

    @property
    def labels(self) -> list[str]:
        """The class labels, in the order of the probability columns."""
        return self.bundle.labels

    @property
    def model_version(self) -> str:
        """The version of the bundle that makes the predictions."""
        return self.bundle.model_version

    def open_header(self, data: bytes | None) -> Image.Image:
        """An image with its size and format checked against the limits, not yet decoded."""
        if data is None:
            raise ImageError("image is required")
        if len(data) > self.max_image_bytes:
            raise ImageError(f"image is {len(data)} bytes; the limit is {self.max_image_bytes}")
        return open_image_header(data, self.max_image_pixels)

    def decode_header(self, img: Image.Image) -> np.ndarray:
        """An image from `open_header` -> the model's square RGBA array (decodes its pixels)."""
        return to_square_rgba(load_first_frame(img, self.max_image_pixels), self.spec.image_size)

    def supports(self, mode: str) -> bool:
        """Whether this bundle scores requests of a modality case (`both`, `fields`, `image`)."""
        return self.bundle.companions.supports(mode)

    @property
    def modalities(self) -> dict[str, bool]:
        """Which cases the bundle scores: both, fields only, image only."""
        return {mode: self.supports(mode) for mode in (BOTH, FIELDS, IMAGE)}

    def model_for(self, mode: str) -> Model:
        """The model that scores rows of a modality case (the main model for `both`)."""
        return self.bundle.model if mode == BOTH else self.bundle.companions.models[mode]

    def _mode(self, record: dict[str, Any], image: bytes | None, allow_extra: bool = False,
              from_text: bool = False) -> tuple[str, dict[str, str]]:
        """A row's modality case, or the errors that say why it cannot be scored (`none`: it
        has neither an image nor a field value)."""
        no_fields = has_no_fields(self.spec, record, allow_extra, from_text)
        if image is not None and not (no_fields and self.supports(IMAGE)):
            return BOTH, {}
        if image is not None:
            return IMAGE, {}
        if no_fields and not self.supports(FIELDS):
            return BOTH, {self.spec.image_column: "image is required"}
        if no_fields:
            return NONE, {self.spec.image_column: "image is missing and so are the fields: "
                          "send an image, the fields, or both"}
        if not self.supports(FIELDS):
            return BOTH, {self.spec.image_column: "image is required (this model has no "
                          "fields-only model: retrain it with this modalfuse)"}
        return FIELDS, {}

    def prepare(self, records: Sequence[dict[str, Any]], images: Sequence[bytes | None],
                allow_extra: bool = False, *, from_text: bool = False,
                max_total_pixels: int | None = None) -> Prepared:
        """Validate and encode rows; a bad row becomes an entry of `errors`.

        A row without an image is scored from its fields, and one with no field values
        from its image, when the bundle has a model for that case (`supports`). Every
        image's header is read before any image is decoded, so a call whose images declare
        more than `max_total_pixels` in all is refused with PixelBudgetError at the cost of
        reading headers. `from_text` is `parse_record`'s (tables read from CSV).
        """
        if len(records) != len(images):
            raise InvalidInput(f"{len(records)} records but {len(images)} images")
        headers: list[Image.Image | None] = []
        image_errors: dict[int, str] = {}
        for i, data in enumerate(images):
            try:
                headers.append(None if data is None else self.open_header(data))
            except ImageError as e:
                headers.append(None)
                image_errors[i] = str(e)
        if max_total_pixels is not None:
            sizes = [h.size for h in headers if h is not None]
            total = sum(w * h for w, h in sizes)
            if total > max_total_pixels:
                raise PixelBudgetError(total, len(sizes), max_total_pixels)
        blank = np.zeros((self.spec.image_size, self.spec.image_size, 4), np.uint8)
        field_ood = self.bundle.companions.field_ood
        parsed, pixels, valid, errors, modes, flags = [], [], [], {}, [], []
        for i, rec in enumerate(records):
            mode, row_err = self._mode(rec, images[i], allow_extra, from_text)
            p: dict[str, Any] = {}
            if mode in (IMAGE, NONE):  # nothing to parse (and no required-field noise)
                p = {f.name: None for f in self.spec.fields}
            else:
                try:
                    p = parse_record(self.spec, rec, allow_extra=allow_extra, from_text=from_text)
                except RecordError as e:
                    row_err.update(e.errors)
            header, headers[i] = headers[i], None  # decoded pixels are not kept past the row
            px = blank
            if i in image_errors:
                row_err[self.spec.image_column] = image_errors[i]
            elif header is not None:
                try:
                    px = self.decode_header(header)
                except ImageError as e:
                    row_err[self.spec.image_column] = str(e)
            if row_err:
                errors[i] = row_err
                continue
            parsed.append(p)
            pixels.append(px)
            valid.append(i)
            modes.append(mode)
            flags.append(field_ood.reasons(p) if field_ood is not None and mode != IMAGE else {})
        if not valid:
            return Prepared(valid, None, errors)
        frame = records_columns(self.spec, parsed)
        batch = self.bundle.preprocessor.transform(frame, np.stack(pixels))
        prep = Prepared(valid, batch, errors, modes, flags)
        no_image = prep.rows_of(FIELDS)
        if len(no_image):
            batch.image_stats[no_image] = np.nan  # no image: nothing may read its statistics
        prep.image_ood = self._image_scores(prep)
        if self.bundle.companions.image_ood is not None:
            prep.image_threshold = self.bundle.companions.image_ood.threshold
        return prep

    def _image_scores(self, prep: Prepared) -> np.ndarray:
        """The image OOD score of every valid row (NaN where there is no image or detector)."""
        scores = np.full(len(prep.valid), np.nan)
        detector = self.bundle.companions.image_ood
        batch = prep.batch
        if detector is None or batch is None:
            return scores
        rows = np.array([i for i, m in enumerate(prep.modes) if m != FIELDS], dtype=int)
        if len(rows):
            scores[rows] = detector.score(image_ood_features(batch.image_stats[rows],
                                                             batch.images[rows]))
        return scores

    def proba(self, prep: Prepared) -> np.ndarray:
        """Probabilities of the valid rows of a Prepared, each case by its own model."""
        assert prep.batch is not None
        if all(m == BOTH for m in prep.modes):
            return self.bundle.model.predict_proba(prep.batch)
        out = np.zeros((len(prep.valid), len(self.labels)))
        for mode in (BOTH, FIELDS, IMAGE):
            rows = prep.rows_of(mode)
            if len(rows):
                out[rows] = self.model_for(mode).predict_proba(prep.batch.take(rows))
        return out

    def predict_proba(self, records: Sequence[dict[str, Any]], images: Sequence[bytes | None],
                      allow_extra: bool = False, *, from_text: bool = False,
                      max_total_pixels: int | None = None,
                      prediction_ids: Sequence[str] | None = None) -> np.ndarray:
        """(n, n_labels) probabilities; raises PredictionInputError if any row is invalid.
        `prediction_ids` (one per row) reach the observers with the rows."""
        t0 = time.perf_counter()
        prep = self.prepare(records, images, allow_extra, from_text=from_text,
                            max_total_pixels=max_total_pixels)
        if prep.errors:
            raise PredictionInputError(prep.errors)
        if prep.batch is None:
            return np.zeros((0, len(self.labels)))
        proba = self.proba(prep)
        self._notify(records, prep, proba, t0, images, prediction_ids)
        return proba

    def predict(self, records: Sequence[dict[str, Any]], images: Sequence[bytes | None],
                top_k: int = 3, allow_extra: bool = False, *, from_text: bool = False,
                max_total_pixels: int | None = None,
                prediction_ids: Sequence[str] | None = None,
                coverage: float | None = None) -> list[dict[str, Any]]:
        """One result per input row: a prediction, or an `error` mapping field -> message.

        A prediction carries its label, probabilities and top classes, its prediction set
        at `coverage` (the bundle's default when None), its OOD flags and the modalities
        it was made from (see `describe`). See `prepare` for `from_text` and
        `max_total_pixels` (PixelBudgetError); `prediction_ids` (one per row) reach the
        observers with the rows.
        """
        if coverage is not None:
            check_coverage(coverage)
        t0 = time.perf_counter()
        prep = self.prepare(records, images, allow_extra, from_text=from_text,
                            max_total_pixels=max_total_pixels)
        out: list[dict[str, Any]] = [{} for _ in records]
        for i, msg in prep.errors.items():
            out[i] = {"error": msg}
        if prep.batch is not None:
            proba = self.proba(prep)
            sets = self.prediction_sets(proba, prep.modes, coverage)
            for k, (row, p) in enumerate(zip(prep.valid, proba, strict=True)):
                out[row] = {**self.format(p, top_k), **self.describe(prep, k, sets[k])}
            self._notify(records, prep, proba, t0, images, prediction_ids)
        return out

    def prediction_sets(self, proba: np.ndarray, modes: Sequence[str],
                        coverage: float | None = None) -> list[dict[str, Any] | None]:
        """Each row's conformal prediction set (most probable label first) at `coverage`,
        by the calibration of its modality case; None where the bundle has none."""
        calib = self.bundle.companions.conformal
        out: list[dict[str, Any] | None] = [None] * len(proba)
        for mode in set(modes):
            c = calib.get(mode)
            if c is None:
                continue
            rows = [i for i, m in enumerate(modes) if m == mode]
            member = c.sets(proba[rows], coverage)
            for r, m in zip(rows, member, strict=True):
                order = [int(j) for j in np.argsort(-proba[r]) if m[j]]
                out[r] = {"labels": [self.labels[j] for j in order],
                          "coverage": c.default_coverage if coverage is None else coverage,
                          "method": c.method}
        return out

    def describe(self, prep: Prepared, k: int, prediction_set: dict[str, Any] | None
                 ) -> dict[str, Any]:
        """What a prediction carries besides its probabilities, for valid row `k`: the
        modalities used and missing, the prediction set, and the OOD flags."""
        mode = prep.modes[k]
        detector = self.bundle.companions.image_ood
        image = None
        if detector is not None and mode != FIELDS and prep.image_ood is not None:
            score = float(prep.image_ood[k])
            image = {"score": round(score, 4), "threshold": round(detector.threshold, 4),
                     "flag": bool(score > detector.threshold)}
        fields_ = None
        if self.bundle.companions.field_ood is not None and mode != IMAGE:
            reasons = prep.field_flags[k]
            fields_ = {"flag": bool(reasons), "reasons": reasons}
        flag = bool((image or {}).get("flag") or (fields_ or {}).get("flag"))
        used = USED[mode]
        return {"prediction_set": prediction_set,
                "ood": {"flag": flag, "image": image, "fields": fields_},
                "modalities": {"used": used,
                               "missing": [m for m in ("fields", "image") if m not in used]}}

    def _notify(self, records: Sequence[dict[str, Any]], prep: Prepared, proba: np.ndarray,
                t0: float, images: Sequence[bytes | None] = (),
                prediction_ids: Sequence[str] | None = None) -> None:
        if not self.observers:
            return
        event = PredictionEvent(records, prep, proba, self.labels, self.model_version,
                                time.perf_counter() - t0, images, prediction_ids)
        for observe in self.observers:
            try:  # an observer (log, metrics, shadow) must never fail the prediction it sees
                observe(event)
            except Exception:
                log.exception("a prediction observer failed: %r", observe)

    def format(self, p: np.ndarray, top_k: int = 3) -> dict[str, Any]:
        """One prediction as the API returns it: the label, every probability and the top `top_k`."""
        order = np.argsort(-p)[:top_k]
        return {
            "label": self.labels[int(order[0])],
            "probabilities": {lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
            "top": [{"label": self.labels[int(j)], "probability": float(p[j])} for j in order],
        }


def table_records(spec: DatasetSpec, table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a table (CSV, Parquet, the dataset) as raw records of the spec's fields.

    Missing values become None; columns that are not input fields are not passed on.
    Cells stay as the table's reader typed them: score records of a CSV with
    `from_text=True` (see `parse_record`).
    """
    names = [f.name for f in spec.fields]
    sub = table.reindex(columns=names).astype(object)
    sub = sub.where(pd.notna(sub), None)
    return sub.to_dict("records")


def api_body(spec: DatasetSpec, record: dict[str, Any], image: bytes) -> dict[str, Any]:
    """A /v1/predict JSON body for a raw record and its image bytes."""
    fields = parse_record(spec, record, allow_extra=True)
    for f in spec.fields:
        if f.kind == FieldKind.multi:
            fields[f.name] = [v for v in str(fields[f.name] or "").split("|") if v]
    return {"fields": {k: v for k, v in fields.items() if v is not None},
            "image_base64": base64.b64encode(image).decode()}
