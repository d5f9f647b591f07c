"""Training: one `train()` for every recipe. Grouped CV on the training part, a final fit, a
temperature from the out-of-fold predictions, a bundle, and one look at the test split.

Every fitted step (vocabularies, scaling, the model, the temperature) is fitted inside the
training rows of each fold by the fold engine, and again on the whole training part for the
final model. The test split is scored once, at the end, through the Predictor from raw rows.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput
from modalfuse.inference.bundle import ModelBundle, save_bundle, update_bundle_meta
from modalfuse.inference.evaluate import evaluate
from modalfuse.inference.oof import OOF_FILE, folds_digest
from modalfuse.inference.predictor import Predictor, api_body, table_records
from modalfuse.models.calibration import CalibratedModel
from modalfuse.training import recipes
from modalfuse.training.companions import fit_companions
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import OOF_KEY, FoldEngine, training_labels


def git_commit() -> str | None:
    """The commit the code was run from, if it is a git checkout."""
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


def check_config(ds: Dataset, cfg: TrainConfig) -> None:
    """Refuse a config naming an unknown recipe or field before anything is fitted."""
    recipes.get(cfg.model)
    unknown = sorted(set(cfg.exclude_fields) - {f.name for f in ds.spec.fields})
    if unknown:
        raise InvalidInput(f"cannot exclude unknown fields {unknown}; "
                           f"fields are {[f.name for f in ds.spec.fields]}")


def train(ds: Dataset, splits: Splits, out_dir: Path, cfg: TrainConfig | None = None,
          evaluate_test: bool = True, engine: FoldEngine | None = None,
          cv: dict | None = None) -> ModelBundle:
    """Train recipe `cfg.model`: CV it on the grouped folds, fit it on the whole training part,
    calibrate it with the out-of-fold temperature, fit its companions (missing-modality
    models, conformal sets, OOD detectors), bundle it, and score the test split once.

    `engine` shares fits between runs (the ablation); `cv` reuses a cross-validation already made.
    """
    cfg = cfg or TrainConfig()
    check_config(ds, cfg)
    recipe = recipes.get(cfg.model)
    if engine is None:
        engine = FoldEngine(ds, splits, cfg, training_labels(ds, splits))
    started = time.perf_counter()
    stages = ["cross-validation"] * (cv is None and cfg.cv) + [
        f"{recipe.name}: final fit on the training part",
        "companions: prediction sets, OOD detectors, missing-modality models"] + [
        "scoring the test split once"] * evaluate_test

    def stage(done: int) -> None:
        """Report the stage under way (`done` of them finished) to the engine's reporter."""
        engine.reporter.on_step("stage", stages[min(done, len(stages) - 1)], done, len(stages))

    stage(0)
    if cv is None and cfg.cv:
        cv = engine.cross_validate(recipe.name)
        stage(1)
    done = len(stages) - 2 - evaluate_test
    temperature = cv["temperature"] if cv else 1.0
    model = CalibratedModel(engine.fit(recipe.name), temperature)
    stage(done + 1)
    metrics: dict = {"cv": cv["summary"] if cv else None}
    bundle = save_bundle(
        out_dir, ds.spec, engine.preprocessor(frozenset()), model, engine.labels,
        dataset={"name": ds.spec.name, "version": ds.version,
                 "split_params": splits.audit.get("params"),
                 "train_rows": len(engine.train_pos), "test_rows": len(splits.ids("test"))},
        metrics=metrics,
        training={"config": cfg.model_dump(mode="json"), "git_commit": git_commit(),
                  "train_seconds": round(time.perf_counter() - started, 2),
                  "temperature": temperature, "model_help": recipe.describe(ds.spec.words)},
        companions=fit_companions(engine, cv),
    )
    stage(done + 2)
    bundle = finish_bundle(bundle, ds, splits, cv, metrics, evaluate_test)
    stage(len(stages))
    return bundle


def finish_bundle(bundle: ModelBundle, ds: Dataset, splits: Splits, cv: dict | None,
                  metrics: dict, evaluate_test: bool) -> ModelBundle:
    """Add the request example, the CV details and the out-of-fold predictions, then score the
    test split once, through the Predictor from raw rows."""
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
