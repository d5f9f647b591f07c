"""Training: grouped CV on the training part, a final fit, a bundle, and one look at test.

Every fitted step (vocabularies, scaling, the model) is fitted inside the training rows
of each fold, and again on the whole training part for the final model. The test split
is scored once, at the end, through the Predictor from raw rows.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from rich.progress import track

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.features.image import normalize_image
from modalfuse.features.preprocess import FeatureBatch, Preprocessor
from modalfuse.features.tabular import parse_record, records_frame
from modalfuse.inference.bundle import ModelBundle, save_bundle, update_bundle_meta
from modalfuse.inference.evaluate import classification_metrics, evaluate
from modalfuse.inference.oof import OOF_FILE, OutOfFold, folds_digest
from modalfuse.inference.predictor import Predictor, api_body, table_records
from modalfuse.models.gbm import GBMModel
from modalfuse.models.netconfig import NetConfig

# The cross-validation result's key for its out-of-fold predictions (saved apart from cv.json).
OOF_KEY = "oof"


class TrainConfig(BaseModel):
    # gbm is the skeleton's LightGBM; the others (fusion.MODEL_NAMES) are trained by fusion.py.
    model: str = Field(default="gbm", description="model to train: gbm or one of fusion.MODEL_NAMES")
    exclude_fields: list[str] = Field(default_factory=list)
    use_image_stats: bool = True
    num_boost_round: int = Field(default=300, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    gbm_params: dict[str, float | int] = Field(default_factory=dict,
                                               description="more LightGBM parameters (HPO)")
    class_weight: str | None = "balanced"
    min_category_count: int = Field(default=2, ge=1)
    seed: int = 42
    cv: bool = True
    net: NetConfig = Field(default_factory=NetConfig, description="neural model settings")


@dataclass
class RawData:
    """Parsed fields and normalized pixels of every dataset row, computed once."""

    ids: np.ndarray
    frame: pd.DataFrame
    images: np.ndarray
    y: np.ndarray  # label index, -1 for rows outside the modelled labels

    def rows(self, ids: np.ndarray) -> np.ndarray:
        pos = pd.Series(np.arange(len(self.ids)), index=self.ids)
        return pos.loc[ids].to_numpy()


def load_raw(ds: Dataset, labels: list[str]) -> RawData:
    spec = ds.spec
    records = [parse_record(spec, r) for r in table_records(spec, ds.table)]
    images = np.stack([
        normalize_image(ds.image_bytes(n), spec.image_size, 10_000_000)
        for n in track(ds.table[spec.image_column], description="decoding images")
    ])
    pos = {lab: i for i, lab in enumerate(labels)}
    y = ds.table[spec.target].map(lambda v: pos.get(v, -1)).to_numpy()
    return RawData(ds.table[spec.id_column].to_numpy(), records_frame(spec, records), images, y)


def fit_fold(ds: Dataset, raw: RawData, train_idx: np.ndarray, cfg: TrainConfig,
             n_classes: int) -> tuple[Preprocessor, GBMModel]:
    pre = Preprocessor(ds.spec, tuple(cfg.exclude_fields), cfg.min_category_count)
    pre.fit(raw.frame.iloc[train_idx].reset_index(drop=True))
    batch = features(pre, raw, train_idx)
    model = GBMModel(use_image_stats=cfg.use_image_stats, num_boost_round=cfg.num_boost_round,
                     params={"learning_rate": cfg.learning_rate, **cfg.gbm_params}, seed=cfg.seed,
                     class_weight=cfg.class_weight)
    names = pre.tabular_names + (pre.image_stat_names if cfg.use_image_stats else [])
    model.fit(batch, raw.y[train_idx], n_classes, feature_names=_safe_names(names))
    return pre, model


def features(pre: Preprocessor, raw: RawData, idx: np.ndarray) -> FeatureBatch:
    return pre.transform(raw.frame.iloc[idx].reset_index(drop=True), raw.images[idx])


def _safe_names(names: list[str]) -> list[str]:
    # LightGBM refuses some characters in feature names; keep them readable.
    return ["".join(c if c.isalnum() or c in "_-." else "_" for c in n) for n in names]


def cross_validate(ds: Dataset, raw: RawData, splits: Splits, cfg: TrainConfig,
                   labels: list[str]) -> dict:
    folds = splits.folds()
    train_rows = splits.table[splits.table["split"] == "train"]
    fold_values = sorted(train_rows["fold"].unique())  # the order splits.folds() uses
    ids, fold_of, probas, per_fold = [], [], [], []
    for k, (tr_ids, va_ids) in enumerate(track(folds, description="grouped CV")):
        tr, va = raw.rows(tr_ids), raw.rows(va_ids)
        pre, model = fit_fold(ds, raw, tr, cfg, len(labels))
        p = model.predict_proba(features(pre, raw, va))
        ids.append(raw.ids[va])
        fold_of.append(np.full(len(va), fold_values[k]))
        probas.append(p)
        per_fold.append({"fold": k, **classification_metrics(p, raw.y[va], labels)})
    summary = {}
    for key in ("accuracy", "macro_f1", "ece", "log_loss"):
        vals = np.array([f[key] for f in per_fold])
        summary[key] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1))}
    all_ids = np.concatenate(ids)
    oof = OutOfFold(all_ids, np.concatenate(fold_of), raw.y[raw.rows(all_ids)],
                    np.concatenate(probas), list(labels))
    return {"folds": per_fold, "summary": summary, "n_folds": len(folds), OOF_KEY: oof}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def request_example(ds: Dataset, ids: np.ndarray) -> dict:
    """A valid /v1/predict body: a real row of the dataset with its image in base64."""
    row = ds.table.set_index(ds.spec.id_column).loc[ids[:1]].reset_index()
    return api_body(ds.spec, table_records(ds.spec, row)[0],
                    ds.image_bytes(row[ds.spec.image_column].iloc[0]))


def train(ds: Dataset, splits: Splits, out_dir: Path, cfg: TrainConfig | None = None,
          evaluate_test: bool = True) -> ModelBundle:
    cfg = cfg or TrainConfig()
    if cfg.model != "gbm":
        from modalfuse.training.folds import train_fusion

        return train_fusion(ds, splits, out_dir, cfg, evaluate_test)
    unknown = sorted(set(cfg.exclude_fields) - {f.name for f in ds.spec.fields})
    if unknown:
        raise ValueError(f"cannot exclude unknown fields {unknown}; "
                         f"fields are {[f.name for f in ds.spec.fields]}")
    train_ids = splits.ids("train")
    labels = sorted(ds.table.set_index(ds.spec.id_column).loc[train_ids, ds.spec.target].unique())
    raw = load_raw(ds, labels)
    started = time.perf_counter()
    cv = cross_validate(ds, raw, splits, cfg, labels) if cfg.cv else None
    pre, model = fit_fold(ds, raw, raw.rows(train_ids), cfg, len(labels))
    metrics: dict = {"cv": cv["summary"] if cv else None}
    bundle = save_bundle(
        out_dir, ds.spec, pre, model, labels,
        dataset={"name": ds.spec.name, "version": ds.version,
                 "split_params": splits.audit.get("params"),
                 "train_rows": len(train_ids), "test_rows": len(splits.ids("test"))},
        metrics=metrics,
        training={"config": cfg.model_dump(), "git_commit": git_commit(),
                  "train_seconds": round(time.perf_counter() - started, 2)},
    )
    return finish_bundle(bundle, ds, splits, cv, metrics, evaluate_test)


def finish_bundle(bundle: ModelBundle, ds: Dataset, splits: Splits, cv: dict | None,
                  metrics: dict, evaluate_test: bool) -> ModelBundle:
    """Add the request example and CV details, then score the test split once, through the
    Predictor from raw rows. Shared by every model kind's training."""
    out_dir = bundle.path
    update_bundle_meta(out_dir, example=request_example(ds, splits.ids("test")))
    eval_dir = out_dir / "evaluation"
    eval_dir.mkdir(exist_ok=True)
    if cv:
        (eval_dir / "cv.json").write_text(json.dumps({k: v for k, v in cv.items() if k != OOF_KEY},
                                                     indent=2))
        oof = cv.get(OOF_KEY)
        if oof is not None:  # what the promotion gate compares: never the test split
            oof.save(out_dir)
            info = {"file": OOF_FILE, "rows": len(oof.ids), "folds_digest": folds_digest(splits.table),
                    "dataset_version": ds.version}
            update_bundle_meta(out_dir, cv_oof=info)
            bundle.meta["cv_oof"] = info
    if evaluate_test:
        result = evaluate(Predictor(bundle), ds, splits.ids("test"), eval_dir, "test")
        metrics["test"] = result["metrics"]
        update_bundle_meta(out_dir, metrics=metrics)
        bundle.meta["metrics"] = metrics
    return bundle
