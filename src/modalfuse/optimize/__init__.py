"""Model optimization: quantized, pruned and distilled variants of a bundle, and their benchmark.

Every variant is a new bundle read by the same Predictor and the same model kinds, so it
can be registered, promoted through the registry gate and served unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.inference.bundle import ModelBundle, load_bundle, save_bundle, update_bundle_meta
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.models.neural import OnnxNetModel
from modalfuse.models.registry import Model


def onnx_parts(model: Any, path: str = "model") -> Iterator[tuple[str, OnnxNetModel]]:
    """Every ONNX network inside a model, however deeply composites (stacking, calibration,
    embedding GBMs) nest them, with a dotted path naming where it sits."""
    if isinstance(model, OnnxNetModel):
        yield path, model
        return
    for key, value in vars(model).items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            for name, sub in value.items():
                if hasattr(sub, "predict_proba"):
                    yield from onnx_parts(sub, f"{path}.{name}")
        elif hasattr(value, "predict_proba"):
            yield from onnx_parts(value, f"{path}.{key}")


def training_batch(bundle: ModelBundle, ds: Dataset, splits: Splits, rows: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, FeatureBatch]:
    """(ids, features) of training-split rows, turned into features by the bundle's own
    Predictor.prepare (the one inference path), never touching the test split."""
    ids = np.asarray(splits.ids("train"))
    if rows is not None and rows < len(ids):
        ids = np.sort(np.random.default_rng(seed).choice(ids, rows, replace=False))
    table = ds.table.set_index(ds.spec.id_column).loc[ids].reset_index()
    prep = Predictor(bundle).prepare(table_records(ds.spec, table), ds.row_images(table))
    if prep.errors or prep.batch is None:
        raise InvalidInput(f"training rows failed to prepare: {dict(list(prep.errors.items())[:3])}")
    return ids, prep.batch


def derive_bundle(source: ModelBundle, model: Model, out: Path, how: dict[str, Any]) -> ModelBundle:
    """Save `model` as a new bundle with the source's preprocessor, labels and dataset, and
    a record of how it was derived (`training.optimized`). The source's companions (the
    missing-modality models, the OOD detectors and the conformal calibration) come along: the
    derived model answers like its source within the tolerance `optimize` checks, so its sets
    keep their coverage up to that difference."""
    meta = source.meta
    training = {**meta.get("training", {}), "optimized": {"from": source.model_version, **how}}
    save_bundle(out, source.spec, source.preprocessor, model, source.labels,
                dataset=meta.get("dataset", {}), metrics={}, training=training,
                companions=source.companions)
    # The request example is added after saving; read it from disk, not a stale in-memory meta.
    example = load_bundle(source.path).meta.get("example")
    if example is not None:
        update_bundle_meta(out, example=example)
    return load_bundle(out)


def fresh_copy(bundle: ModelBundle) -> ModelBundle:
    """A second, independent in-memory copy of a saved bundle (its parts can be edited)."""
    return load_bundle(bundle.path)


def file_size(path: Path) -> int:
    """Bytes on disk of a bundle folder (model files only: evaluation output left out)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*")
               if p.is_file() and "evaluation" not in p.relative_to(path).parts)
