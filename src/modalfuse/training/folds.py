"""The one fold engine: every model of every recipe is fitted here, on the training rows
outside some CV folds, and memoised per (recipe, excluded folds).

`FoldEngine.fit(name, excluded)` fits recipe `name` on the training rows outside the
`excluded` folds: the preprocessor, the features and the model all see those rows only.
Cross-validation (`cross_validate`), held-out predictions (`heldout`), the final fit
(`fit(name)`, nothing excluded), tuning, selection, the decisions and the ablation all go
through it. A stacked model fitted without folds E learns its meta-learner from predictions
of parts fitted without E ∪ {j} on fold j: the meta-learner never sees a prediction made on a
row its part trained on, and its own CV score (excluding fold k) never touches fold k.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.features.image import normalize_image
from modalfuse.features.image_tensor import image_tensor
from modalfuse.features.preprocess import FeatureBatch, Preprocessor
from modalfuse.features.tabular import parse_record, records_frame
from modalfuse.inference.evaluate import classification_metrics
from modalfuse.inference.oof import OutOfFold
from modalfuse.inference.predictor import table_records
from modalfuse.models.calibration import apply_temperature, fit_temperature
from modalfuse.models.gbm import GBMModel
from modalfuse.models.neural import EmbeddingGBMModel, OnnxNetModel, net_feeds
from modalfuse.models.registry import Model
from modalfuse.progress import SILENT, ProgressReporter, steps
from modalfuse.training import recipes
from modalfuse.training.config import TrainConfig

if TYPE_CHECKING:
    from modalfuse.training.nets import TrainingImages

Excluded = frozenset[int]
CV_METRICS = ("accuracy", "macro_f1", "ece", "log_loss")
# Largest image a dataset row may hold when training decodes it (pixels).
MAX_TRAIN_PIXELS = 10_000_000
# The cross-validation result's key for its out-of-fold predictions (saved apart from cv.json).
OOF_KEY = "oof"


@dataclass
class RawData:
    """Parsed fields and normalized pixels of every dataset row, computed once."""

    ids: np.ndarray
    frame: pd.DataFrame
    images: np.ndarray
    y: np.ndarray  # label index, -1 for rows outside the modelled labels

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Positions of these row ids in the raw data, in the order given."""
        pos = pd.Series(np.arange(len(self.ids)), index=self.ids)
        return pos.loc[ids].to_numpy()


def training_labels(ds: Dataset, splits: Splits) -> list[str]:
    """The modelled labels: every target value of the training split, sorted."""
    return sorted(ds.table.set_index(ds.spec.id_column).loc[splits.ids("train"),
                                                            ds.spec.target].unique())


def load_raw(ds: Dataset, labels: list[str], reporter: ProgressReporter = SILENT) -> RawData:
    """Parse every row's fields and decode every row's image once, the way serving does."""
    spec = ds.spec
    records = [parse_record(spec, r) for r in table_records(spec, ds.table)]
    images = np.stack([
        normalize_image(ds.image_bytes(n), spec.image_size, MAX_TRAIN_PIXELS)
        for n in steps(list(ds.table[spec.image_column]), reporter, "image", "decoding images")
    ])
    pos = {lab: i for i, lab in enumerate(labels)}
    y = ds.table[spec.target].map(lambda v: pos.get(v, -1)).to_numpy()
    return RawData(ds.table[spec.id_column].to_numpy(), records_frame(spec, records), images, y)


def safe_feature_names(names: list[str]) -> list[str]:
    """Feature names LightGBM accepts (it refuses some characters), still readable."""
    return ["".join(c if c.isalnum() or c in "_-." else "_" for c in n) for n in names]


def fit_lightgbm(batch: FeatureBatch, y: np.ndarray, n_classes: int, cfg: TrainConfig,
                 names: list[str], use_image_stats: bool, use_tabular: bool = True) -> GBMModel:
    """The one place LightGBM is configured from a TrainConfig (tuned `gbm_params` included)."""
    model = GBMModel(use_image_stats=use_image_stats, num_boost_round=cfg.num_boost_round,
                     params={"learning_rate": cfg.learning_rate, **cfg.gbm_params}, seed=cfg.seed,
                     class_weight=cfg.class_weight, use_tabular=use_tabular)
    return model.fit(batch, y, n_classes, feature_names=safe_feature_names(names))


def cv_summary(per_fold: list[dict], keys: tuple[str, ...] = CV_METRICS) -> dict:
    """Mean and sample standard deviation over folds of each metric."""
    summary = {}
    for key in keys:
        vals = np.array([f[key] for f in per_fold])
        summary[key] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1))}
    return summary


class FoldEngine:
    """Fits any recipe on the training rows outside some CV folds, once per (recipe, folds).

    `reporter` hears of image decoding, each cross-validation's folds and each network's
    epochs (silent by default)."""

    def __init__(self, ds: Dataset, splits: Splits, cfg: TrainConfig, labels: list[str],
                 raw: RawData | None = None, reporter: ProgressReporter = SILENT):
        self.ds, self.splits, self.cfg, self.labels = ds, splits, cfg, labels
        self.reporter = reporter
        self.raw = raw if raw is not None else load_raw(ds, labels, reporter)
        self.train_pos = self.raw.rows(splits.ids("train"))
        fold_table = splits.table.set_index("id")["fold"]
        self.fold_of = fold_table.loc[self.raw.ids[self.train_pos]].to_numpy()
        self.folds = sorted(set(self.fold_of.tolist()))
        self._pre: dict[Excluded, Preprocessor] = {}
        self._batches: dict[Excluded, FeatureBatch] = {}
        self._fits: dict[tuple[str, Excluded], Model] = {}
        self._views: tuple[np.ndarray, np.ndarray] | None = None
        self.fit_seconds: dict[str, float] = {}

    @property
    def n_classes(self) -> int:
        """How many labels the models predict."""
        return len(self.labels)

    def rows(self, excluded: Excluded) -> np.ndarray:
        """Positions (in the raw data) of the training rows outside the excluded folds."""
        return self.train_pos[~np.isin(self.fold_of, list(excluded))]

    def fold_rows(self, k: int) -> np.ndarray:
        """Positions of the training rows of fold `k`."""
        return self.train_pos[self.fold_of == k]

    def preprocessor(self, excluded: Excluded) -> Preprocessor:
        """The preprocessor fitted on the training rows outside the excluded folds."""
        if excluded not in self._pre:
            cfg = self.cfg
            pre = Preprocessor(self.ds.spec, tuple(cfg.exclude_fields), cfg.min_category_count)
            self._pre[excluded] = pre.fit(self.raw.frame.iloc[self.rows(excluded)].reset_index(drop=True))
        return self._pre[excluded]

    def batch(self, excluded: Excluded, pos: np.ndarray) -> FeatureBatch:
        """Features of raw rows `pos`, by the preprocessor fitted without the excluded folds."""
        if excluded not in self._batches:
            self._batches[excluded] = self.preprocessor(excluded).transform(self.raw.frame,
                                                                            self.raw.images)
        return self._batches[excluded].take(pos)

    def seed(self, excluded: Excluded) -> int:
        """A seed of its own for every set of excluded folds (networks)."""
        return self.cfg.seed + 1000 * (1 + sum(2**k for k in excluded))

    # -- training images: the front sprite plus extra views, for training species only -----
    def view_images(self) -> tuple[np.ndarray, np.ndarray]:
        """(pixels uint8, raw position) of every extra view of a *training-split* species."""
        if self._views is None:
            spec, views = self.ds.spec, self.ds.views
            wanted = set(self.cfg.net.views)
            pixels, owner = [], []
            if views is not None and len(views) and wanted:
                pos = dict(zip(self.raw.ids[self.train_pos].tolist(), self.train_pos.tolist(),
                               strict=True))
                sel = views[views["id"].isin(pos) & views["view"].isin(wanted)]
                for rid, path in steps(list(zip(sel["id"], sel["path"], strict=True)),
                                       self.reporter, "image", "decoding training views"):
                    pixels.append(normalize_image(self.ds.image_bytes(path), spec.image_size,
                                                  MAX_TRAIN_PIXELS))
                    owner.append(pos[rid])
            empty = np.zeros((0, *self.raw.images.shape[1:]), np.uint8)
            self._views = (np.stack(pixels) if pixels else empty, np.array(owner, dtype=int))
        return self._views

    def training_images(self, rows: np.ndarray) -> TrainingImages:
        """The images a network trains on for these rows: each row's sprite plus its views."""
        from modalfuse.training.nets import TrainingImages

        vp, vo = self.view_images()
        local = {int(p): i for i, p in enumerate(rows)}
        keep = np.array([int(o) in local for o in vo], dtype=bool)
        pixels = np.concatenate([self.raw.images[rows], vp[keep]])
        owner = np.concatenate([np.arange(len(rows)), [local[int(o)] for o in vo[keep]]]).astype(int)
        return TrainingImages(image_tensor(pixels, self.cfg.net.image_size), owner)

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, name: str, excluded: Excluded = frozenset()) -> Model:
        """Recipe `name` fitted on the training rows outside `excluded` (memoised)."""
        recipe = recipes.get(name)
        key = (name, excluded)
        if key not in self._fits:
            started = time.perf_counter()
            self._fits[key] = recipe.fit(self, excluded)
            self.fit_seconds[name] = self.fit_seconds.get(name, 0.0) + time.perf_counter() - started
        return self._fits[key]

    def lightgbm(self, excluded: Excluded, use_image_stats: bool,
                 embedder: OnnxNetModel | None = None, use_tabular: bool = True) -> GBMModel:
        """LightGBM on the rows outside `excluded`; with `embedder`, its embedding is appended
        to the image statistics; without `use_tabular`, on the image statistics alone."""
        pre = self.preprocessor(excluded)
        rows = self.rows(excluded)
        batch = self.batch(excluded, rows)
        names = ((pre.tabular_names if use_tabular else [])
                 + (pre.image_stat_names if use_image_stats else []))
        if embedder is not None:
            batch = EmbeddingGBMModel.with_embedding(batch, embedder.embedding(batch))
            names += [f"cnn_emb_{i}" for i in range(batch.image_stats.shape[1] - len(pre.image_stat_names))]
        return fit_lightgbm(batch, self.raw.y[rows], self.n_classes, self.cfg, names, use_image_stats,
                            use_tabular)

    def network(self, excluded: Excluded, with_tabular: bool) -> OnnxNetModel:
        """The image network (or, with tabular input, the fusion network), trained with torch
        and exported to ONNX."""
        from modalfuse.training.nets import FusionNet, ImageNet, export_onnx, fit_network

        cfg = self.cfg.net
        rows = self.rows(excluded)
        batch = self.batch(excluded, rows)
        images = self.training_images(rows)
        tab = batch.tabular_dense if with_tabular else None
        net = (FusionNet(self.n_classes, batch.tabular_dense.shape[1], cfg) if with_tabular
               else ImageNet(self.n_classes, cfg))
        label = "intermediate" if with_tabular else "cnn"
        held = ",".join(str(k) for k in sorted(excluded))
        fit_network(net, images, tab, self.raw.y[rows], self.n_classes, cfg, self.seed(excluded),
                    description=f"{label} network, " + (f"without folds {held}" if held else
                                                        "all training rows"),
                    reporter=self.reporter)
        inputs = list(net.input_names)
        feeds = net_feeds(batch.take(np.arange(min(2, len(rows)))), inputs, cfg.image_size)
        return OnnxNetModel(export_onnx(net, feeds), inputs, cfg.image_size,
                            outputs=["logits", "embedding"])

    # -- out-of-fold predictions ---------------------------------------------------------------
    def fold_predictions(self, name: str, excluded: Excluded = frozenset(),
                         reporter: ProgressReporter = SILENT
                         ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(fold, rows, probabilities) for each fold outside `excluded`: the fold's rows
        predicted by recipe `name` fitted without that fold (and without `excluded`); each
        fold is a `fold` step to `reporter` (the nested fits of a stacked model stay quiet)."""
        folds = [k for k in self.folds if k not in excluded]
        for done, k in enumerate(folds):
            reporter.on_step("fold", f"{name} without fold {k}", done, len(folds))
            held = frozenset(excluded | {k})
            rows = self.fold_rows(k)
            yield k, rows, self.fit(name, held).predict_proba(self.batch(held, rows))
        if folds:
            reporter.on_step("fold", f"{name} without fold {folds[-1]}", len(folds), len(folds))

    def heldout(self, name: str, excluded: Excluded = frozenset(),
                reporter: ProgressReporter = SILENT) -> tuple[np.ndarray, np.ndarray]:
        """(rows, probabilities): every training row outside `excluded`, each predicted by the
        model fitted without its own fold (and without `excluded`)."""
        rows = self.rows(excluded)
        proba = np.zeros((len(rows), self.n_classes))
        for _, fold_rows, p in self.fold_predictions(name, excluded, reporter):
            proba[np.isin(rows, fold_rows)] = p
        return rows, proba

    def cross_validate(self, name: str) -> dict:
        """Grouped-CV scores of a recipe, calibrated per fold with a temperature fitted on the
        other folds' out-of-fold predictions; plus the temperature for the final model."""
        rows, proba = self.heldout(name, reporter=self.reporter)
        y = self.raw.y[rows]
        fold_by_pos = dict(zip(self.train_pos.tolist(), self.fold_of.tolist(), strict=True))
        fold = np.array([fold_by_pos[int(r)] for r in rows])
        per_fold = []
        calibrated = np.zeros_like(proba)
        for k in self.folds:
            m = fold == k
            t = fit_temperature(proba[~m], y[~m])
            calibrated[m] = apply_temperature(proba[m], t)
            per_fold.append({"fold": k, "temperature": t,
                             **classification_metrics(calibrated[m], y[m], self.labels)})
        # Each row's calibrated probabilities come from models that never saw its fold.
        oof = OutOfFold(self.raw.ids[rows], fold, y, calibrated, list(self.labels))
        return {"model": name, "folds": per_fold, "summary": cv_summary(per_fold),
                "n_folds": len(self.folds), "temperature": fit_temperature(proba, y),
                "uncalibrated": classification_metrics(proba, y, self.labels), OOF_KEY: oof}


