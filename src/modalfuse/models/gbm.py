"""Gradient-boosted trees (LightGBM) on tabular features, optionally with image statistics.

Trained by LightGBM, served by ONNX Runtime: `save` writes the native text model (for
training-side tools: feature importance, distillation) and its ONNX conversion
(onnxmltools, float32 inputs), and a loaded model predicts with the ONNX file, so the
serving install needs no lightgbm. The two agree within 1e-5
(`tests/inference/test_gbm_onnx.py`); a bundle written before the ONNX file existed is
still read natively when lightgbm is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modalfuse.errors import ModelError, NotFitted
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.models.registry import register

if TYPE_CHECKING:
    import lightgbm as lgb

ONNX_FILE = "model.onnx"
# The ONNX opset the converter writes (onnxmltools supports up to 15 for LightGBM).
ONNX_OPSET = 15


def booster_to_onnx(booster: lgb.Booster) -> bytes:
    """The ONNX model of a LightGBM booster: float32 `input` (n, features) -> `label`,
    `probabilities` (training side: needs onnxmltools)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_lightgbm(booster, initial_types=[("input", FloatTensorType([None, booster.num_feature()]))],
                           zipmap=False, target_opset=ONNX_OPSET)
    onx.graph.name = "lightgbm"  # the converter names the graph with a random uuid: the
    return onx.SerializeToString()  # bundle's content hash must not change with it

DEFAULT_PARAMS = {
    "objective": "multiclass",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 5,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
    # One thread: on 517 rows a second thread gains little, and OpenMP spin-waits turn
    # into a large slowdown whenever the cores are shared (CI, a busy laptop).
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
}


def gbm_inputs(batch: FeatureBatch, use_image_stats: bool, use_tabular: bool = True) -> np.ndarray:
    """The matrix LightGBM reads: the raw tabular columns and/or the image statistics."""
    if not use_tabular:
        return batch.image_stats
    if use_image_stats:
        return np.hstack([batch.tabular, batch.image_stats])
    return batch.tabular


@register(libraries=("onnxruntime",))
class GBMModel:
    """The `lightgbm` served kind: gradient-boosted trees on tabular features (and image statistics)."""

    kind: ClassVar[str] = "lightgbm"

    def __init__(self, use_image_stats: bool = True, num_boost_round: int = 300,
                 params: dict | None = None, seed: int = 0, class_weight: str | None = "balanced",
                 use_tabular: bool = True):
        self.use_image_stats = use_image_stats
        self.use_tabular = use_tabular  # False: the image statistics alone (image-only model)
        self.num_boost_round = num_boost_round
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.seed = seed
        self.class_weight = class_weight
        self.booster_: lgb.Booster | None = None
        self.onnx_: bytes | None = None  # set by `load` from the bundle's ONNX file
        self._session: Any = None
        self.n_classes_: int | None = None
        self._converted: bytes | None = None  # the ONNX file `save` wrote for a fitted booster

    def fit(self, batch: FeatureBatch, y: np.ndarray, n_classes: int,
            feature_names: list[str] | None = None) -> GBMModel:
        """Train the booster on a batch and integer labels, class-balanced by default; returns self."""
        import lightgbm as lgb

        x = gbm_inputs(batch, self.use_image_stats, self.use_tabular)
        weight = None
        if self.class_weight == "balanced":
            counts = np.bincount(y, minlength=n_classes).astype(float)
            weight = (len(y) / (n_classes * np.maximum(counts, 1)))[y]
        params = {**self.params, "num_class": n_classes, "seed": self.seed}
        ds = lgb.Dataset(x, y, weight=weight, feature_name=feature_names or "auto",
                         free_raw_data=True)
        self.booster_ = lgb.train(params, ds, num_boost_round=self.num_boost_round)
        self.n_classes_ = n_classes
        # A fitted model predicts natively (CV, the fold engine); its loaded bundle by ONNX.
        self.onnx_, self._session, self._converted = None, None, None
        return self

    @property
    def session(self) -> Any:
        """The ONNX Runtime session of a loaded model (one thread), built on first use."""
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # the converter's static output shapes warn per call
            self._session = ort.InferenceSession(self.onnx_, opts,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """(n, n_classes) probabilities: by ONNX Runtime for a loaded model, by LightGBM for
        one just fitted; NotFitted before `fit`."""
        x = gbm_inputs(batch, self.use_image_stats, self.use_tabular)
        if self.onnx_ is not None:
            if not len(x):
                return np.zeros((0, self.n_classes_ or 0))
            out = self.session.run(["probabilities"], {"input": x.astype(np.float32)})[0]
            return np.asarray(out, dtype=np.float64)
        if self.booster_ is None:
            raise NotFitted("GBMModel is not fitted; call fit() first")
        return np.asarray(self.booster_.predict(x, num_threads=1), dtype=np.float64)

    def native_proba(self, batch: FeatureBatch) -> np.ndarray:
        """(n, n_classes) probabilities by LightGBM itself (the parity check's reference)."""
        if self.booster_ is None:
            raise NotFitted("GBMModel has no native booster")
        x = gbm_inputs(batch, self.use_image_stats, self.use_tabular)
        return np.asarray(self.booster_.predict(x, num_threads=1), dtype=np.float64)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per input column, by column name."""
        assert self.booster_ is not None
        gains = self.booster_.feature_importance("gain")
        return dict(zip(self.booster_.feature_name(), gains.tolist(), strict=True))

    def save(self, directory: Path) -> dict:
        """Write the booster as LightGBM's text model and as ONNX; return the meta `load` reads."""
        assert self.booster_ is not None
        (directory / "model.lgb.txt").write_text(self.booster_.model_to_string())
        if self.onnx_ is None and self._converted is None:  # converted once per fitted booster
            self._converted = booster_to_onnx(self.booster_)
        (directory / ONNX_FILE).write_bytes(self.onnx_ or self._converted or b"")
        return {"kind": self.kind, "file": "model.lgb.txt", "onnx_file": ONNX_FILE,
                "n_classes": self.n_classes_, "use_image_stats": self.use_image_stats,
                "num_boost_round": self.num_boost_round, "params": self.params,
                "class_weight": self.class_weight,
                **({} if self.use_tabular else {"use_tabular": False})}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> GBMModel:
        """The model `save` wrote into `directory`: its ONNX file for predictions, and the
        native booster too when lightgbm is installed (training-side tools)."""
        m = cls(use_image_stats=meta["use_image_stats"], num_boost_round=meta["num_boost_round"],
                params=meta["params"], class_weight=meta.get("class_weight"),
                use_tabular=meta.get("use_tabular", True))
        m.n_classes_ = meta.get("n_classes")
        if meta.get("onnx_file"):
            m.onnx_ = (directory / meta["onnx_file"]).read_bytes()
        try:
            import lightgbm as lgb
        except ModuleNotFoundError:
            if m.onnx_ is None:
                raise ModelError(f"{directory} holds a LightGBM model without its ONNX file "
                                 "(written before modalfuse served LightGBM by ONNX Runtime): "
                                 "install lightgbm to read it, or retrain it") from None
            return m
        m.booster_ = lgb.Booster(model_str=(directory / meta["file"]).read_text())
        return m


def lightgbm_parts(model: object) -> list[GBMModel]:
    """Every LightGBM model inside a model, through calibration, pools and embeddings."""
    if isinstance(model, GBMModel):
        return [model]
    inner = [getattr(model, a) for a in ("inner", "gbm") if hasattr(model, a)]
    inner += list(getattr(model, "parts", {}).values())
    return [g for m in inner for g in lightgbm_parts(m)]
