"""Raw table fields -> validated records -> numeric feature matrix.

`parse_record` is the single place where a raw field value (from JSON, CSV or Parquet)
is checked against the DatasetSpec; training data, CLI batches and API requests all pass
through it, so a value the model never accepted in training cannot sneak in at serving.
Typed input (JSON, Parquet) is taken strictly: no string becomes a number or a boolean.
Text input (CSV) is converted by one documented rule, asked for with `from_text=True`.
"""

from __future__ import annotations

import math
import re
import reprlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.errors import InvalidInput, NotFitted
from modalfuse.spec import DatasetSpec, FieldKind, FieldSpec

OTHER = "__other__"


class RecordError(InvalidInput):
    """A record's fields break the input schema; `errors` maps field -> message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


# The text rule (`from_text=True`): how a CSV cell that its reader left as text becomes a
# value. A number is a plain decimal (sign, digits, optional fraction and exponent; no
# thousands separators, no "inf"/"nan" words); a boolean is true/false/1/0 in any case.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TEXT_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxlevel = 60, 60, 6, 3


def _show(v: Any) -> str:
    """repr of a value, cut short: a huge or deeply nested value gives a short message."""
    return _SHORT.repr(v.item() if isinstance(v, np.generic) else v)


def _kind_of(v: Any) -> str:
    """How an error message names a value of the wrong type: "a string '39'"."""
    if isinstance(v, str):
        return f"a string {_show(v)}"
    if isinstance(v, bool | np.bool_):
        return f"boolean {str(bool(v)).lower()}"
    if isinstance(v, int | float | np.integer | np.floating):
        return f"the number {_show(v)}"
    return f"{type(v).__name__} {_show(v)}"


def _is_missing(f: FieldSpec, v: Any, from_text: bool, na_values: frozenset[str] = frozenset()
                ) -> bool:
    """None is missing everywhere; NaN, blank cells and the dataset's own missing markers
    (`DatasetSpec.na_values`) only in text (CSV, read as written)."""
    if v is None:
        return True
    if from_text and isinstance(v, float) and math.isnan(v):
        return True
    if from_text and isinstance(v, str) and v in na_values:
        return True
    if isinstance(v, str) and v.strip() == "":
        return from_text or f.kind in (FieldKind.categorical, FieldKind.multi)
    return False


def _number(v: Any, from_text: bool) -> float:
    if isinstance(v, bool | np.bool_):
        raise InvalidInput(f"must be a number, got {_kind_of(v)}")
    if isinstance(v, int | float | np.integer | np.floating):
        return float(v)
    if from_text and isinstance(v, str):
        if _DECIMAL.fullmatch(v.strip()):
            return float(v)
        raise InvalidInput(f"must be a number, got {_show(v)}")
    raise InvalidInput(f"must be a number, got {_kind_of(v)}")


def _boolean(v: Any, from_text: bool) -> bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if from_text:
        if isinstance(v, int | float | np.integer | np.floating) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in _TEXT_BOOLEANS:
            return _TEXT_BOOLEANS[v.strip().lower()]
        raise InvalidInput(f"must be true or false (in text: true, false, 1 or 0), got {_show(v)}")
    raise InvalidInput(f"must be true or false, got {_kind_of(v)}")


def _parse_value(f: FieldSpec, v: Any, from_text: bool = False,
                 na_values: frozenset[str] = frozenset()) -> Any:
    """One raw value -> its canonical form, or ValueError saying what is allowed."""
    if _is_missing(f, v, from_text, na_values):
        if f.required:
            raise InvalidInput("is required")
        return None if f.kind != FieldKind.multi else ""
    if f.kind == FieldKind.numeric:
        x = _number(v, from_text)
        if not math.isfinite(x):
            shown = "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
            raise InvalidInput(f"must be a finite number, got {shown}")
        if (f.min is not None and x < f.min) or (f.max is not None and x > f.max):
            raise InvalidInput(f"must be between {f.min} and {f.max}, got {x:g}")
        return x
    if f.kind == FieldKind.boolean:
        return _boolean(v, from_text)
    if f.kind == FieldKind.categorical:
        if not isinstance(v, str):
            raise InvalidInput(f"must be a string, got {type(v).__name__} {_show(v)}")
        if f.categories and v not in f.categories:
            raise InvalidInput(f"must be one of {f.categories}, got {_show(v)}")
        return v
    # multi-valued: a list of strings, or one string joined by "|"
    if isinstance(v, str):
        labels = [s.strip() for s in v.split("|") if s.strip()]
    elif isinstance(v, list | tuple | np.ndarray) and all(isinstance(s, str) for s in v):
        labels = [s.strip() for s in v if s.strip()]
    else:
        raise InvalidInput(f"must be a list of strings or a '|'-joined string, got {_show(v)}")
    if f.categories:
        bad = [s for s in labels if s not in f.categories]
        if bad:
            raise InvalidInput(f"unknown value(s) {_show(bad)}; allowed: {f.categories}")
    return "|".join(labels)


def has_no_fields(spec: DatasetSpec, record: dict[str, Any], allow_extra: bool = False,
                  from_text: bool = False) -> bool:
    """Whether a raw record carries no field value at all (each of the spec's fields missing
    by `parse_record`'s rules, and no unknown key unless `allow_extra`): what makes a row
    with an image an image-only request."""
    known = {f.name for f in spec.fields}
    if not allow_extra and any(k not in known for k in record):
        return False
    na_values = frozenset(spec.na_values)
    return all(_is_missing(f, record.get(f.name), from_text, na_values) for f in spec.fields)


def parse_record(spec: DatasetSpec, record: dict[str, Any], allow_extra: bool = False,
                 from_text: bool = False) -> dict:
    """A raw record -> canonical values of the spec's fields, or RecordError naming each bad one.

    Values are taken as typed (JSON, Parquet, the dataset): a number for a numeric field, a
    boolean for a boolean one; a string "39" or "yes" there is an error, and so is NaN.
    `from_text=True` is for tables read from text (CSV), whose reader leaves a cell as a
    string when it could not type its column: such cells are converted by the text rule
    above, and NaN or a blank cell is missing.
    """
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    na_values = frozenset(spec.na_values)
    for f in spec.fields:
        try:
            out[f.name] = _parse_value(f, record.get(f.name), from_text, na_values)
        except ValueError as e:
            errors[f.name] = str(e)
    if not allow_extra:
        known = {f.name for f in spec.fields}
        for k in record:
            if k not in known:
                errors[str(k)[:100]] = f"unknown field; known fields are {sorted(known)}"
    if errors:
        raise RecordError(errors)
    return out


class RecordColumns:
    """Parsed records as typed columns without a DataFrame: what the serving path encodes.

    Built exactly like `records_frame` (same dtypes, same missing values) at a fraction of
    the cost; DataFrame construction dominated a single-row prediction.
    """

    def __init__(self, columns: dict[str, Any], n_rows: int):
        self.columns, self.n_rows = columns, n_rows

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def __len__(self) -> int:
        return self.n_rows


def records_columns(spec: DatasetSpec, records: list[dict]) -> RecordColumns:
    """Parsed records as typed columns, ready for `TabularEncoder.transform` (no DataFrame)."""
    cols: dict[str, Any] = {}
    for f in spec.fields:
        vals = [r[f.name] for r in records]
        if f.kind == FieldKind.numeric:
            cols[f.name] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        elif f.kind == FieldKind.boolean:
            cols[f.name] = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        else:
            cols[f.name] = vals
    return RecordColumns(cols, len(records))


def records_frame(spec: DatasetSpec, records: list[dict]) -> pd.DataFrame:
    """Parsed records (already valid) -> a typed frame with one column per field."""
    cols = {}
    for f in spec.fields:
        vals = [r[f.name] for r in records]
        if f.kind == FieldKind.numeric:
            cols[f.name] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        elif f.kind == FieldKind.boolean:
            cols[f.name] = np.array([np.nan if v is None else float(v) for v in vals])
        else:
            cols[f.name] = pd.Series(vals, dtype=object)
    return pd.DataFrame(cols, index=range(len(records)))


@dataclass
class TabularEncoder:
    """Numeric fields as they are (NaN kept), categoricals and multi-valued fields one-hot.

    Vocabularies are learned in `fit` from the training rows only; a value seen fewer
    than `min_count` times becomes `__other__` (categorical) or is dropped (multi).
    """

    spec: DatasetSpec
    exclude: tuple[str, ...] = ()
    min_count: int = 2
    vocab_: dict[str, list[str]] | None = field(default=None, init=False)
    medians_: dict[str, float] | None = field(default=None, init=False)
    scales_: dict[str, list[float]] | None = field(default=None, init=False)
    feature_names_: list[str] | None = field(default=None, init=False)

    @property
    def used_fields(self) -> list[FieldSpec]:
        """The spec's fields the encoder reads (all but the excluded ones)."""
        return [f for f in self.spec.fields if f.name not in self.exclude]

    def fit(self, frame: pd.DataFrame) -> TabularEncoder:
        """Learn each field's vocabulary, and the medians and scales of the encoded columns; returns self."""
        vocab: dict[str, list[str]] = {}
        names: list[str] = []
        for f in self.used_fields:
            if f.kind in (FieldKind.numeric, FieldKind.boolean):
                names.append(f.name)
            elif f.kind == FieldKind.categorical:
                counts = Counter(v for v in frame[f.name] if v is not None)
                vocab[f.name] = sorted(v for v, c in counts.items() if c >= self.min_count) + [OTHER]
                names += [f"{f.name}={v}" for v in vocab[f.name]]
            else:
                counts = Counter(s for v in frame[f.name] if v for s in str(v).split("|"))
                vocab[f.name] = sorted(v for v, c in counts.items() if c >= self.min_count)
                names += [f"{f.name}:{v}" for v in vocab[f.name]]
        self.vocab_, self.feature_names_ = vocab, names
        raw = self._encode(frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column
            med = np.nan_to_num(np.nanmedian(raw, axis=0)) if len(raw) else np.zeros(raw.shape[1])
        self.medians_ = dict(zip(names, med.tolist(), strict=True))
        filled = np.where(np.isnan(raw), med[None, :], raw)
        mu, sd = filled.mean(0), filled.std(0)
        self.scales_ = {"mean": mu.tolist(), "std": np.where(sd > 1e-9, sd, 1.0).tolist()}
        return self

    def _check(self) -> None:
        if self.vocab_ is None or self.medians_ is None or self.feature_names_ is None:
            raise NotFitted("TabularEncoder is not fitted; call fit(train_frame) first")

    def _encode(self, frame: pd.DataFrame | RecordColumns) -> np.ndarray:
        assert self.vocab_ is not None and self.feature_names_ is not None
        n = len(frame)
        blocks = []
        for f in self.used_fields:
            if f.kind in (FieldKind.numeric, FieldKind.boolean):
                blocks.append(np.asarray(frame[f.name], dtype=np.float64).reshape(n, 1))
            elif f.kind == FieldKind.categorical:
                vocab = self.vocab_[f.name]
                pos = {v: i for i, v in enumerate(vocab)}
                m = np.zeros((n, len(vocab)))
                for r, v in enumerate(frame[f.name]):
                    if v is None:
                        continue  # missing: all zeros, distinct from __other__
                    m[r, pos.get(v, len(vocab) - 1)] = 1.0
                blocks.append(m)
            else:
                vocab = self.vocab_[f.name]
                pos = {v: i for i, v in enumerate(vocab)}
                m = np.zeros((n, len(vocab)))
                for r, v in enumerate(frame[f.name]):
                    for s in str(v or "").split("|"):
                        if s in pos:
                            m[r, pos[s]] = 1.0
                blocks.append(m)
        return np.hstack(blocks) if blocks else np.zeros((n, 0))

    def transform(self, frame: pd.DataFrame | RecordColumns) -> np.ndarray:
        """Feature matrix with NaN for missing numerics (tree models handle them)."""
        self._check()
        return self._encode(frame)

    def transform_dense(self, frame: pd.DataFrame | RecordColumns) -> np.ndarray:
        """Median-imputed, standardized matrix for neural models."""
        self._check()
        return self.densify(self._encode(frame))

    def transform_both(self, frame: pd.DataFrame | RecordColumns) -> tuple[np.ndarray, np.ndarray]:
        """(transform, transform_dense) from one encoding pass: the serving hot path."""
        self._check()
        raw = self._encode(frame)
        return raw, self.densify(raw)

    def densify(self, x: np.ndarray) -> np.ndarray:
        """Impute missing values with training medians and standardize (what neural models read)."""
        assert self.scales_ is not None and self.medians_ is not None
        nan = np.isnan(x)
        if nan.any():
            fill = np.array([self.medians_.get(n, 0.0) for n in self.feature_names_ or []])
            x = np.where(nan, fill[None, :], x)
        return (x - np.array(self.scales_["mean"])) / np.array(self.scales_["std"])

    def to_dict(self) -> dict:
        """The fitted state as JSON-ready data."""
        self._check()
        return {"exclude": list(self.exclude), "min_count": self.min_count, "vocab": self.vocab_,
                "medians": self.medians_, "scales": self.scales_,
                "feature_names": self.feature_names_}

    @classmethod
    def from_dict(cls, spec: DatasetSpec, d: dict) -> TabularEncoder:
        """A fitted encoder rebuilt from `to_dict` output and its spec."""
        enc = cls(spec=spec, exclude=tuple(d["exclude"]), min_count=d["min_count"])
        enc.vocab_, enc.medians_, enc.scales_ = d["vocab"], d["medians"], d["scales"]
        enc.feature_names_ = d["feature_names"]
        return enc
