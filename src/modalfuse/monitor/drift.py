"""Drift and skew against the training reference, computed through the bundle's own Preprocessor.

The reference is the model's training rows: their raw fields, the features the
Preprocessor makes of them (what the model saw) and the model's predictions on them.
Serving rows are compared with it in two ways: data drift on the raw fields (has the
world changed?) and skew on the features (does serving compute what training computed?).
Both sides go through the same `Predictor.prepare`, so a difference is a real difference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.data.dataset import load_dataset
from modalfuse.data.split import load_splits
from modalfuse.errors import DataError
from modalfuse.features.tabular import RecordError, parse_record, records_frame
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.monitor.predlog import LoggedPredictions
from modalfuse.spec import DatasetSpec, FieldKind

# Population stability index bands, as commonly used in credit-risk monitoring.
PSI_WARN, PSI_DRIFT = 0.1, 0.25
MIN_ROWS = 30  # fewer serving rows than this say little about a distribution


class NoReferenceError(DataError):
    """The training reference of a model cannot be found or built here."""


@dataclass
class Reference:
    """What the served model saw in training: its features, raw fields and predictions (drift's baseline)."""

    model_version: str
    feature_names: list[str]
    features: np.ndarray  # (n, d) float32, what the model saw in training
    fields: pd.DataFrame  # typed raw fields (records_frame)
    predicted: np.ndarray  # model's predicted label per training row

    def save(self, folder: Path) -> None:
        """Write the reference into `folder` (cached per model version)."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "features.npy", self.features)
        self.fields.to_parquet(folder / "fields.parquet", index=False)
        (folder / "reference.json").write_text(json.dumps({
            "model_version": self.model_version, "feature_names": self.feature_names,
            "predicted": self.predicted.tolist()}))

    @classmethod
    def load(cls, folder: Path) -> Reference:
        """The reference saved in `folder`."""
        meta = json.loads((folder / "reference.json").read_text())
        return cls(meta["model_version"], meta["feature_names"], np.load(folder / "features.npy"),
                   pd.read_parquet(folder / "fields.parquet"), np.array(meta["predicted"]))


def feature_names(predictor: Predictor) -> list[str]:
    """Names of the logged feature vector: the preprocessor's tabular columns then image statistics."""
    pre = predictor.bundle.preprocessor
    return [*pre.tabular_names, *pre.image_stat_names]


def build_reference(predictor: Predictor, table: pd.DataFrame, images: list[bytes]) -> Reference:
    """Training rows (raw table + image bytes) through the Predictor's preprocessing and model."""
    records = table_records(predictor.spec, table)
    prep = predictor.prepare(records, images)
    if prep.batch is None:
        raise NoReferenceError("no training row could be prepared for the reference")
    batch = prep.batch
    feats = np.hstack([batch.tabular, batch.image_stats]).astype(np.float32)
    proba = predictor.bundle.model.predict_proba(batch)
    labels = np.array(predictor.labels)[proba.argmax(axis=1)]
    parsed = [parse_record(predictor.spec, records[i]) for i in prep.valid]
    return Reference(predictor.model_version, feature_names(predictor), feats,
                     records_frame(predictor.spec, parsed), labels)


def reference_from_dataset(predictor: Predictor, dataset_dir: Path) -> Reference:
    """The reference of the served model from its dataset's training rows."""
    if not (dataset_dir / "spec.json").exists() and not dataset_dir.exists():
        raise NoReferenceError(f"dataset folder {dataset_dir} does not exist")
    ds = load_dataset(dataset_dir, validate=False)
    train_ids = set(load_splits(ds).ids("train").tolist())
    table = ds.table[ds.table[ds.spec.id_column].isin(train_ids)].reset_index(drop=True)
    return build_reference(predictor, table, ds.row_images(table))


def load_or_build_reference(predictor: Predictor, monitoring_dir: Path,
                            dataset_dir: Path) -> Reference:
    """The cached reference of the served model, built from its dataset the first time."""
    folder = monitoring_dir / "reference" / predictor.model_version
    if (folder / "reference.json").exists():
        return Reference.load(folder)
    try:
        ref = reference_from_dataset(predictor, dataset_dir)
    except (FileNotFoundError, OSError, NoReferenceError) as e:
        raise NoReferenceError(
            f"no training reference for model {predictor.model_version}: {e}. Run `modalfuse "
            "monitor` where the dataset is, or copy its monitoring/reference folder here") from None
    ref.save(folder)
    return ref


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of one numeric column; NaN (missing) is its own bin."""
    ref, cur = np.asarray(reference, float), np.asarray(current, float)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    finite = ref[np.isfinite(ref)]
    distinct = np.unique(finite)
    if len(distinct) <= bins:  # binary one-hot columns, small integer codes
        edges = np.concatenate([[-np.inf], (distinct[:-1] + distinct[1:]) / 2, [np.inf]])
    else:
        inner = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        edges = np.concatenate([[-np.inf], inner, [np.inf]])

    def shares(x: np.ndarray) -> np.ndarray:
        counts = np.histogram(x[np.isfinite(x)], edges)[0]
        counts = np.append(counts, np.sum(~np.isfinite(x)))
        return (counts + 0.5) / (len(x) + 0.5 * len(counts))  # smoothed: no log(0)

    r, c = shares(ref), shares(cur)
    return float(np.sum((c - r) * np.log(c / r)))


def categorical_psi(reference: pd.Series, current: pd.Series) -> float:
    """Population stability index between two categorical samples (smoothed counts)."""
    cats = sorted(set(reference.astype(str)) | set(current.astype(str)))
    r = reference.astype(str).value_counts().reindex(cats, fill_value=0).to_numpy() + 0.5
    c = current.astype(str).value_counts().reindex(cats, fill_value=0).to_numpy() + 0.5
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def _band(value: float) -> str:
    if not np.isfinite(value):
        return "unknown"
    return "drift" if value >= PSI_DRIFT else ("warn" if value >= PSI_WARN else "ok")


def serving_fields(spec: DatasetSpec, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Logged records parsed into typed fields; rows that no longer parse are skipped."""
    parsed = []
    for r in records:
        try:
            parsed.append(parse_record(spec, r))
        except RecordError:
            continue  # logged rows were valid when scored; a spec change leaves them out
    return records_frame(spec, parsed)


def field_drift(spec: DatasetSpec, reference: pd.DataFrame, current: pd.DataFrame) -> list[dict]:
    """PSI of every input field between training and serving, worst first, with its status band."""
    out = []
    for f in spec.fields:
        if f.name not in reference or f.name not in current:
            continue
        if f.kind in (FieldKind.numeric, FieldKind.boolean):
            value = psi(reference[f.name].to_numpy(float), current[f.name].to_numpy(float))
        else:
            value = categorical_psi(reference[f.name].fillna("<missing>"),
                                    current[f.name].fillna("<missing>"))
        out.append({"field": f.name, "kind": f.kind.value, "psi": round(value, 4),
                    "status": _band(value)})
    return sorted(out, key=lambda d: -d["psi"])


def feature_skew(reference: Reference, current: np.ndarray, names: list[str]) -> list[dict]:
    """PSI of every model feature between training and serving, worst first (training-serving skew)."""
    if names != reference.feature_names:
        raise NoReferenceError("logged features do not match the reference's feature names; "
                               "the log holds another model's rows")
    out = []
    for j, name in enumerate(names):
        value = psi(reference.features[:, j], current[:, j])
        out.append({"feature": name, "psi": round(value, 4), "status": _band(value),
                    "reference_mean": float(np.nanmean(reference.features[:, j])),
                    "serving_mean": float(np.nanmean(current[:, j])) if len(current) else None})
    return sorted(out, key=lambda d: -d["psi"])


def drift_summary(predictor: Predictor, reference: Reference, logged: LoggedPredictions,
                  top: int = 10) -> dict[str, Any]:
    """Data drift (raw fields), prediction drift and feature skew of the logged serving rows.

    Only rows scored from both modalities are compared: the reference is training rows with
    both, and a fields-only row's missing image statistics (or an image-only row's missing
    fields) and another model's predictions would read as drift. The other rows are counted
    (`other_case_rows`); `modalfuse monitor`'s inputs table reports their mix.
    """
    other = len(logged) - len(both := logged.of_case("both"))
    logged = both
    n = len(logged)
    base: dict[str, Any] = {
        "model_version": predictor.model_version, "reference_rows": len(reference.features),
        "serving_rows": n, "other_case_rows": other,
        "thresholds": {"psi_warn": PSI_WARN, "psi_drift": PSI_DRIFT}, "min_rows": MIN_ROWS,
    }
    if n == 0:
        return {**base, "status": "no_data", "message": "no logged predictions for this model"}
    fields = field_drift(predictor.spec, reference.fields,
                         serving_fields(predictor.spec, logged.records()))
    pred_psi = categorical_psi(pd.Series(reference.predicted), logged.frame["label"])
    skew = feature_skew(reference, logged.features(),
                        logged.feature_names(predictor.model_version) or reference.feature_names)
    drifted = [d["field"] for d in fields if d["status"] == "drift"]
    skewed = [d["feature"] for d in skew if d["status"] == "drift"]
    status = "insufficient_data" if n < MIN_ROWS else (
        "drift" if drifted or _band(pred_psi) == "drift" or skewed else "ok")
    ref_share = pd.Series(reference.predicted).value_counts(normalize=True)
    cur_share = logged.frame["label"].value_counts(normalize=True)
    return {
        **base, "status": status,
        "data_drift": {"drifted_fields": drifted,
                       "share_drifted": len(drifted) / max(1, len(fields)), "fields": fields},
        "prediction_drift": {"psi": round(pred_psi, 4), "status": _band(pred_psi),
                             "reference_share": ref_share.round(4).to_dict(),
                             "serving_share": cur_share.round(4).to_dict()},
        "skew": {"skewed_features": skewed, "share_skewed": len(skewed) / max(1, len(skew)),
                 "top": skew[:top]},
    }
