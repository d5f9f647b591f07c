"""Neural and fused models: cross-fitting on the grouped folds, stacking, calibration, training.

Every model is fitted by `CrossFitter.fit(name, excluded)` on the training rows outside the
`excluded` CV folds, and memoised, so the ablation shares fits between models. A stacked
model fitted without folds E learns its meta-learner from predictions of parts fitted
without E ∪ {j} on fold j: the meta-learner never sees a prediction made on a row its
part trained on, and its own CV score (excluding fold k) never touches fold k.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from rich.progress import track

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.features.image import normalize_image
from modalfuse.features.image_tensor import image_tensor
from modalfuse.features.preprocess import FeatureBatch, Preprocessor
from modalfuse.inference.bundle import ModelBundle, save_bundle
from modalfuse.inference.evaluate import classification_metrics
from modalfuse.inference.oof import OutOfFold
from modalfuse.models.gbm import GBMModel
from modalfuse.models.neural import (
    CalibratedModel,
    EmbeddingGBMModel,
    OnnxNetModel,
    StackingModel,
    apply_temperature,
    fit_temperature,
    net_feeds,
)
from modalfuse.models.registry import Model

log = logging.getLogger(__name__)

MODEL_NAMES = ("gbm_tabular", "gbm", "cnn", "stacking", "intermediate", "gbm_embed")
MODEL_HELP = {
    "gbm_tabular": "tabular only: LightGBM on the Pokédex record",
    "gbm": "LightGBM on tabular + hand-made image statistics (concatenation baseline)",
    "cnn": "image only: sprite CNN trained from scratch",
    "stacking": "late fusion: log-linear pool of gbm, gbm_tabular and cnn, fitted out of fold",
    "intermediate": "intermediate fusion: CNN embedding ⊕ tabular MLP -> shared head",
    "gbm_embed": "LightGBM on tabular + image statistics + CNN embedding",
}
# Two GBMs (with and without image statistics) disagree usefully; the CNN adds the sprite.
STACKING_PARTS = ("gbm", "gbm_tabular", "cnn")
NET_MODELS = ("cnn", "intermediate", "gbm_embed", "stacking")

Excluded = frozenset[int]


def check_model_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; available: {list(MODEL_NAMES)}")
    return name


class CrossFitter:
    """Fits any model on the training rows outside some CV folds, once per (model, folds)."""

    def __init__(self, ds: Dataset, splits: Splits, cfg, labels: list[str], raw=None):
        from modalfuse.training.train import load_raw

        self.ds, self.splits, self.cfg, self.labels = ds, splits, cfg, labels
        self.raw = raw if raw is not None else load_raw(ds, labels)
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
        return len(self.labels)

    def rows(self, excluded: Excluded) -> np.ndarray:
        """Positions (in the raw data) of the training rows outside the excluded folds."""
        return self.train_pos[~np.isin(self.fold_of, list(excluded))]

    def fold_rows(self, k: int) -> np.ndarray:
        return self.train_pos[self.fold_of == k]

    def preprocessor(self, excluded: Excluded) -> Preprocessor:
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
                for rid, path in track(list(zip(sel["id"], sel["path"], strict=True)),
                                       description="decoding training views"):
                    pixels.append(normalize_image(self.ds.image_bytes(path), spec.image_size,
                                                  10_000_000))
                    owner.append(pos[rid])
            empty = np.zeros((0, *self.raw.images.shape[1:]), np.uint8)
            self._views = (np.stack(pixels) if pixels else empty, np.array(owner, dtype=int))
        return self._views

    def training_images(self, rows: np.ndarray):
        from modalfuse.training.nets import TrainingImages

        vp, vo = self.view_images()
        local = {int(p): i for i, p in enumerate(rows)}
        keep = np.array([int(o) in local for o in vo], dtype=bool)
        pixels = np.concatenate([self.raw.images[rows], vp[keep]])
        owner = np.concatenate([np.arange(len(rows)), [local[int(o)] for o in vo[keep]]]).astype(int)
        return TrainingImages(image_tensor(pixels, self.cfg.net.image_size), owner)

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, name: str, excluded: Excluded = frozenset()) -> Model:
        check_model_name(name)
        key = (name, excluded)
        if key not in self._fits:
            started = time.perf_counter()
            self._fits[key] = getattr(self, f"_fit_{name}")(excluded)
            self.fit_seconds[name] = self.fit_seconds.get(name, 0.0) + time.perf_counter() - started
        return self._fits[key]

    def _seed(self, excluded: Excluded) -> int:
        return self.cfg.seed + 1000 * (1 + sum(2**k for k in excluded))

    def _gbm(self, excluded: Excluded, use_image_stats: bool,
             emb: OnnxNetModel | None = None) -> GBMModel:
        from modalfuse.training.train import _safe_names

        cfg, pre = self.cfg, self.preprocessor(excluded)
        rows = self.rows(excluded)
        batch = self.batch(excluded, rows)
        names = pre.tabular_names + (pre.image_stat_names if use_image_stats else [])
        if emb is not None:
            batch = EmbeddingGBMModel.with_embedding(batch, emb.embedding(batch))
            names += [f"cnn_emb_{i}" for i in range(batch.image_stats.shape[1] - len(pre.image_stat_names))]
        model = GBMModel(use_image_stats=use_image_stats, num_boost_round=cfg.num_boost_round,
                         params={"learning_rate": cfg.learning_rate}, seed=cfg.seed,
                         class_weight=cfg.class_weight)
        return model.fit(batch, self.raw.y[rows], self.n_classes, feature_names=_safe_names(names))

    def _fit_gbm(self, excluded: Excluded) -> Model:
        return self._gbm(excluded, True)

    def _fit_gbm_tabular(self, excluded: Excluded) -> Model:
        return self._gbm(excluded, False)

    def _net(self, excluded: Excluded, with_tabular: bool) -> OnnxNetModel:
        from modalfuse.training.nets import FusionNet, ImageNet, export_onnx, fit_network

        cfg = self.cfg.net
        rows = self.rows(excluded)
        batch = self.batch(excluded, rows)
        images = self.training_images(rows)
        tab = batch.tabular_dense if with_tabular else None
        net = (FusionNet(self.n_classes, batch.tabular_dense.shape[1], cfg) if with_tabular
               else ImageNet(self.n_classes, cfg))
        label = "intermediate" if with_tabular else "cnn"
        held = ",".join(str(k) for k in sorted(excluded)) or "none"
        fit_network(net, images, tab, self.raw.y[rows], self.n_classes, cfg, self._seed(excluded),
                    description=f"{label} (folds held out: {held})")
        inputs = list(net.input_names)
        feeds = net_feeds(batch.take(np.arange(min(2, len(rows)))), inputs, cfg.image_size)
        return OnnxNetModel(export_onnx(net, feeds), inputs, cfg.image_size,
                            outputs=["logits", "embedding"])

    def _fit_cnn(self, excluded: Excluded) -> Model:
        return self._net(excluded, with_tabular=False)

    def _fit_intermediate(self, excluded: Excluded) -> Model:
        return self._net(excluded, with_tabular=True)

    def _fit_gbm_embed(self, excluded: Excluded) -> Model:
        emb = self.fit("cnn", excluded)
        assert isinstance(emb, OnnxNetModel)
        return EmbeddingGBMModel(emb, self._gbm(excluded, True, emb=emb))

    def _fit_stacking(self, excluded: Excluded) -> Model:
        rows = self.rows(excluded)
        oof = [self.heldout(part, excluded)[1] for part in STACKING_PARTS]
        model = StackingModel({part: self.fit(part, excluded) for part in STACKING_PARTS},
                              l2=10.0, balanced=False)
        return model.fit_meta(oof, self.raw.y[rows])

    # -- out-of-fold predictions ---------------------------------------------------------------
    def heldout(self, name: str, excluded: Excluded = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """(rows, probabilities): every training row outside `excluded`, each predicted by the
        model fitted without its own fold (and without `excluded`)."""
        rows = self.rows(excluded)
        proba = np.zeros((len(rows), self.n_classes))
        for k in self.folds:
            if k in excluded:
                continue
            held = excluded | {k}
            mask = np.isin(rows, self.fold_rows(k))
            proba[mask] = self.fit(name, frozenset(held)).predict_proba(self.batch(frozenset(held),
                                                                                   rows[mask]))
        return rows, proba

    def cross_validate(self, name: str) -> dict:
        """Grouped-CV scores of a model, calibrated per fold with a temperature fitted on the
        other folds' out-of-fold predictions; plus the temperature for the final model."""
        rows, proba = self.heldout(name)
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
        summary = {}
        for key in ("accuracy", "macro_f1", "ece", "log_loss"):
            vals = np.array([f[key] for f in per_fold])
            summary[key] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1))}
        # Each row's calibrated probabilities come from models that never saw its fold.
        oof = OutOfFold(self.raw.ids[rows], fold, y, calibrated, list(self.labels))
        return {"model": name, "folds": per_fold, "summary": summary, "n_folds": len(self.folds),
                "temperature": fit_temperature(proba, y),
                "uncalibrated": classification_metrics(proba, y, self.labels), "oof": oof}


def train_fusion(ds: Dataset, splits: Splits, out_dir: Path, cfg, evaluate_test: bool = True,
                 fitter: CrossFitter | None = None, cv: dict | None = None) -> ModelBundle:
    """Train `cfg.model` (any of MODEL_NAMES), calibrate it on held-out folds, bundle it, score test."""
    from modalfuse.training.train import finish_bundle, git_commit

    name = check_model_name(cfg.model)
    if fitter is None:
        train_ids = splits.ids("train")
        labels = sorted(ds.table.set_index(ds.spec.id_column).loc[train_ids, ds.spec.target].unique())
        fitter = CrossFitter(ds, splits, cfg, labels)
    started = time.perf_counter()
    if cv is None and cfg.cv:
        cv = fitter.cross_validate(name)
    final = fitter.fit(name)
    temperature = cv["temperature"] if cv else 1.0
    model = CalibratedModel(final, temperature)
    metrics: dict = {"cv": cv["summary"] if cv else None}
    bundle = save_bundle(
        out_dir, ds.spec, fitter.preprocessor(frozenset()), model, fitter.labels,
        dataset={"name": ds.spec.name, "version": ds.version,
                 "split_params": splits.audit.get("params"),
                 "train_rows": len(fitter.train_pos), "test_rows": len(splits.ids("test"))},
        metrics=metrics,
        training={"config": cfg.model_dump(mode="json"), "git_commit": git_commit(),
                  "train_seconds": round(time.perf_counter() - started, 2),
                  "temperature": temperature, "model_help": MODEL_HELP[name]},
    )
    return finish_bundle(bundle, ds, splits, cv, metrics, evaluate_test)
