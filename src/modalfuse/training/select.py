"""In-fold feature selection for the tabular part: top-k by LightGBM gain or mutual information.

A selector is fitted on one CV fold's training rows only and scored on that fold's
validation rows, so the CV estimate of "with selection" includes the selection's own
variance. `selection_cv` reports the selected set per fold and CV with vs without it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
from rich.progress import track

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput, NotFitted
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.inference.evaluate import classification_metrics
from modalfuse.models.gbm import DEFAULT_PARAMS
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import FoldEngine, cv_summary, fit_lightgbm, safe_feature_names

METHODS = ("gain", "mutual_info")


class TabularSelector:
    """Keeps the k most useful tabular columns; fitted attributes end in `_`."""

    def __init__(self, k: int = 30, method: str = "gain", num_boost_round: int = 100, seed: int = 0):
        self.k = k
        self.method = method
        self.num_boost_round = num_boost_round
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray, names: list[str], n_classes: int,
            ids: np.ndarray | None = None) -> TabularSelector:
        """Score every column on these rows only (one fold's training rows)."""
        if self.method not in METHODS:
            raise InvalidInput(f"unknown selection method {self.method!r}; choose one of {list(METHODS)}")
        if self.k < 1:
            raise InvalidInput(f"k must be at least 1, got {self.k}")
        if self.method == "gain":
            import lightgbm as lgb

            booster = lgb.train({**DEFAULT_PARAMS, "num_class": n_classes, "seed": self.seed},
                                lgb.Dataset(x, y), num_boost_round=self.num_boost_round)
            scores = booster.feature_importance("gain").astype(float)
        else:
            from sklearn.feature_selection import mutual_info_classif

            scores = mutual_info_classif(np.nan_to_num(x, nan=-1.0), y, random_state=self.seed)
        order = np.argsort(-scores, kind="stable")[:min(self.k, x.shape[1])]
        self.scores_ = scores
        self.selected_ = np.sort(order)
        self.selected_names_ = [names[i] for i in self.selected_]
        self.fit_ids_ = None if ids is None else np.asarray(ids)
        return self

    def transform(self, batch: FeatureBatch) -> FeatureBatch:
        """The batch with only the fitted `selected_` tabular columns kept; `NotFitted` before `fit`."""
        if not hasattr(self, "selected_"):
            raise NotFitted("TabularSelector is not fitted; call fit() first")
        return FeatureBatch(batch.tabular[:, self.selected_], batch.tabular_dense, batch.image_stats,
                            batch.images)


def training_only(ds: Dataset, splits: Splits) -> Dataset:
    """The dataset cut to its training split: what tuning and selection may read. Test rows
    (and their images) are not even loaded, which is the proof that they are not used."""
    train_ids = set(splits.ids("train").tolist())
    table = ds.table[ds.table[ds.spec.id_column].isin(train_ids)].reset_index(drop=True)
    views = ds.views
    if views is not None:
        views = views[views["id"].isin(train_ids)].reset_index(drop=True)
    return dataclasses.replace(ds, table=table, views=views)


def selection_cv(ds: Dataset, splits: Splits, cfg: TrainConfig, k: int,
                 method: str = "gain") -> dict[str, Any]:
    """Grouped CV of the LightGBM model with and without in-fold top-k selection of tabular columns."""
    train = training_only(ds, splits)
    labels = sorted(train.table[ds.spec.target].unique())
    engine = FoldEngine(train, splits, cfg, labels)
    raw = engine.raw
    per_fold: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for fold, held_fold in enumerate(track(engine.folds, description="selection CV")):
        held = frozenset({held_fold})
        tr, va = engine.rows(held), engine.fold_rows(held_fold)
        pre = engine.preprocessor(held)
        btr, bva = engine.batch(held, tr), engine.batch(held, va)
        names = safe_feature_names(pre.tabular_names)
        selector = TabularSelector(k, method, seed=cfg.seed).fit(btr.tabular, raw.y[tr], names,
                                                                 len(labels), ids=raw.ids[tr])
        counts.update(selector.selected_names_)
        result: dict[str, Any] = {"fold": fold, "n_tabular": len(names),
                                  "selected_columns": selector.selected_names_,
                                  "selector_fit_ids": raw.ids[tr].tolist()}
        for label, (a, b, cols) in {"all": (btr, bva, names),
                                    "selected": (selector.transform(btr), selector.transform(bva),
                                                 selector.selected_names_)}.items():
            extra = pre.image_stat_names if cfg.use_image_stats else []
            model = fit_lightgbm(a, raw.y[tr], len(labels), cfg, cols + extra, cfg.use_image_stats)
            result[label] = classification_metrics(model.predict_proba(b), raw.y[va], labels)
        per_fold.append(result)
    summary = {}
    for label in ("all", "selected"):
        for key, value in cv_summary([f[label] for f in per_fold], ("accuracy", "macro_f1")).items():
            summary[f"{label}_{key}"] = value
    return {"k": k, "method": method, "n_folds": len(per_fold), "summary": summary,
            "selected_in_folds": dict(counts.most_common()), "folds": per_fold}


def to_markdown(report: dict[str, Any], top: int = 15) -> str:
    """The selection report as Markdown: all vs selected columns, and the `top` most often chosen."""
    s = report["summary"]
    lines = [f"In-fold selection: top {report['k']} tabular columns by {report['method']} "
             f"(fitted on each fold's training rows only), {report['n_folds']}-fold grouped CV.\n",
             "| features | accuracy | macro-F1 |", "|---|---|---|"]
    for label, name in (("all", "all tabular columns"), ("selected", f"top {report['k']}")):
        a, f = s[f"{label}_accuracy"], s[f"{label}_macro_f1"]
        lines.append(f"| {name} | {a['mean']:.3f} ± {a['sd']:.3f} | {f['mean']:.3f} ± {f['sd']:.3f} |")
    lines += ["", f"Most often selected (folds out of {report['n_folds']}):", "",
              "| column | folds |", "|---|---|"]
    lines += [f"| {n} | {c} |" for n, c in list(report["selected_in_folds"].items())[:top]]
    return "\n".join(lines) + "\n"
