"""The Predictor: the one inference path from raw records (fields + image bytes) to probabilities.

Offline evaluation, `modalfuse predict`, the HTTP API, the Ray batch job and the UI all
call it, and nothing else re-implements preprocessing: this is how training-serving skew
is kept out. Bad rows become error entries; they never take the other rows down.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from modalfuse.features.tabular import RecordError, parse_record, records_columns
from modalfuse.inference.bundle import ModelBundle, load_bundle
from modalfuse.spec import DatasetSpec, FieldKind

log = logging.getLogger("modalfuse.predict")

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
    """Rows after validation: the indices that passed, their features, and errors of the rest."""

    valid: list[int]  # row indices that passed validation, in order
    batch: FeatureBatch | None
    errors: dict[int, dict[str, str]]


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

    def decode_image(self, data: bytes | None) -> np.ndarray:
        """Image bytes -> the model's square RGBA array, within the per-image limits."""
        return self.decode_header(self.open_header(data))

    def prepare(self, records: Sequence[dict[str, Any]], images: Sequence[bytes | None],
                allow_extra: bool = False, *, from_text: bool = False,
                max_total_pixels: int | None = None) -> Prepared:
        """Validate and encode rows; a bad row becomes an entry of `errors`.

        Every image's header is read before any image is decoded, so a call whose images
        declare more than `max_total_pixels` in all is refused with PixelBudgetError at the
        cost of reading headers. `from_text` is `parse_record`'s (tables read from CSV).
        """
        if len(records) != len(images):
            raise InvalidInput(f"{len(records)} records but {len(images)} images")
        headers: list[Image.Image | None] = []
        image_errors: dict[int, str] = {}
        for i, data in enumerate(images):
            try:
                headers.append(self.open_header(data))
            except ImageError as e:
                headers.append(None)
                image_errors[i] = str(e)
        if max_total_pixels is not None:
            sizes = [h.size for h in headers if h is not None]
            total = sum(w * h for w, h in sizes)
            if total > max_total_pixels:
                raise PixelBudgetError(total, len(sizes), max_total_pixels)
        parsed, pixels, valid, errors = [], [], [], {}
        for i, rec in enumerate(records):
            row_err: dict[str, str] = {}
            try:
                p = parse_record(self.spec, rec, allow_extra=allow_extra, from_text=from_text)
            except RecordError as e:
                row_err.update(e.errors)
            header, headers[i] = headers[i], None  # decoded pixels are not kept past the row
            if header is None:
                row_err[self.spec.image_column] = image_errors[i]
            else:
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
        if not valid:
            return Prepared(valid, None, errors)
        frame = records_columns(self.spec, parsed)
        batch = self.bundle.preprocessor.transform(frame, np.stack(pixels))
        return Prepared(valid, batch, errors)

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
        proba = self.bundle.model.predict_proba(prep.batch)
        self._notify(records, prep, proba, t0, images, prediction_ids)
        return proba

    def predict(self, records: Sequence[dict[str, Any]], images: Sequence[bytes | None],
                top_k: int = 3, allow_extra: bool = False, *, from_text: bool = False,
                max_total_pixels: int | None = None,
                prediction_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One result per input row: a prediction, or an `error` mapping field -> message.

        See `prepare` for `from_text` and `max_total_pixels` (PixelBudgetError);
        `prediction_ids` (one per row) reach the observers with the rows.
        """
        t0 = time.perf_counter()
        prep = self.prepare(records, images, allow_extra, from_text=from_text,
                            max_total_pixels=max_total_pixels)
        out: list[dict[str, Any]] = [{} for _ in records]
        for i, msg in prep.errors.items():
            out[i] = {"error": msg}
        if prep.batch is not None:
            proba = self.bundle.model.predict_proba(prep.batch)
            for row, p in zip(prep.valid, proba, strict=True):
                out[row] = self.format(p, top_k)
            self._notify(records, prep, proba, t0, images, prediction_ids)
        return out

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
