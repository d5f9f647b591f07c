"""MLflow tracking: where runs go, and everything a training run records.

The store is `MLFLOW_TRACKING_URI` when set (any MLflow server), else an embedded one under
the data folder: `<data_dir>/mlflow/mlflow.db` (sqlite) with artifacts in
`<data_dir>/mlflow/artifacts` — both explicit, never wherever a command happens to run.
Nothing is configured at import time; each call sets the store for its own duration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from modalfuse import __version__
from modalfuse.config import Settings
from modalfuse.data.dataset import Dataset, images_digest, table_digest
from modalfuse.data.split import Splits
from modalfuse.errors import ModelError
from modalfuse.inference.bundle import TRAINING_LIBRARIES, ModelBundle, library_versions
from modalfuse.spec import DatasetSpec
from modalfuse.tracking.model_card import write_card

if TYPE_CHECKING:
    from mlflow import MlflowClient

EMBEDDED_DB = "mlflow.db"
MODEL_ARTIFACT = "model"  # name of the logged pyfunc model inside a run


class TrackingError(ModelError):
    """The tracking store or a run is not in the state an operation needs."""


@dataclass(frozen=True)
class Store:
    """Where runs and models go, decided once from the environment and the settings."""

    tracking_uri: str
    registry_uri: str
    embedded: bool
    artifact_root: Path | None  # the embedded store's artifact folder


def quiet_mlflow() -> None:
    """Opt out of MLflow's usage telemetry (it would phone home) unless the user chose otherwise."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Our own progress shows; MLflow's per-file download bars only add noise to a CLI run.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_store(settings: Settings) -> Store:
    """The store runs and models go to: MLFLOW_TRACKING_URI if set, else the embedded one."""
    quiet_mlflow()
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return Store(env, os.environ.get("MLFLOW_REGISTRY_URI") or env, False, None)
    uri = f"sqlite:///{(settings.mlflow_dir / EMBEDDED_DB).resolve()}"
    return Store(uri, uri, True, (settings.mlflow_dir / "artifacts").resolve())


def tracking_uri(settings: Settings) -> str:
    """The tracking URI of the project's store."""
    return resolve_store(settings).tracking_uri


def registry_uri(settings: Settings) -> str:
    """The model registry URI of the project's store."""
    return resolve_store(settings).registry_uri


def get_client(settings: Settings | Store) -> MlflowClient:
    """An MLflow client on the project's store (creates the embedded store's folder)."""
    from mlflow import MlflowClient

    store = settings if isinstance(settings, Store) else resolve_store(settings)
    if store.embedded:
        store.artifact_root.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    return MlflowClient(store.tracking_uri, store.registry_uri)


@contextmanager
def using_store(settings: Settings | Store) -> Iterator[Store]:
    """Point MLflow's fluent API at the project's store for the duration, then restore it.

    MLflow mirrors its URIs into MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, so those are
    what is saved and put back (unset if they were unset).
    """
    import mlflow

    store = settings if isinstance(settings, Store) else resolve_store(settings)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    if store.embedded:
        store.artifact_root.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.registry_uri)
    try:
        yield store
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def experiment_id(client: MlflowClient, name: str, store: Store) -> str:
    """The experiment for a dataset, created with an explicit artifact folder when embedded."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = (store.artifact_root / name).as_uri() if store.artifact_root else None
    return str(client.create_experiment(name, artifact_location=location))


@contextmanager
def training_run(settings: Settings | Store, experiment: str, run_name: str | None = None,
                 tags: dict[str, str] | None = None) -> Iterator[Any]:
    """A top-level run in the dataset's experiment (the parent of HPO trials)."""
    import mlflow

    with using_store(settings) as store:
        exp_id = experiment_id(get_client(store), experiment, store)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
            yield run


@contextmanager
def trial_run(params: dict[str, Any], run_name: str | None = None) -> Iterator[Any]:
    """A nested run under the active run: one HPO trial, its params logged on entry.

    Use inside `training_run(...)`; log the trial's metrics with `mlflow.log_metric`.
    """
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        raise TrackingError("trial_run needs an active parent run; open one with training_run()")
    with mlflow.start_run(run_name=run_name, nested=True,
                          experiment_id=parent.info.experiment_id) as run:
        mlflow.log_params(flatten(params))
        yield run


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as flat `a.b.c` MLflow params; lists become JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else v
    return out


def metric_key(name: str) -> str:
    """A label turned into a valid MLflow metric key."""
    # MLflow keys allow letters, digits and _-./ and spaces; class names may hold anything.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def git_info(start: Path | None = None) -> dict[str, str | bool | None]:
    """The commit, branch and dirty flag of the checkout the code runs from (None outside git)."""
    cwd = start or Path(__file__).parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if commit else None,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD") if commit else None}


def environment() -> dict[str, Any]:
    """Python, platform, modalfuse version and every installed distribution, for the run's record."""
    dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                    if d.metadata["Name"]}, key=str.lower)
    return {"python": platform.python_version(), "platform": platform.platform(),
            "modalfuse": __version__, "packages": dists}


def dvc_data_version(path: Path) -> dict[str, str] | None:
    """The DVC output that holds `path`, from the nearest dvc.lock above it (md5, stage)."""
    import yaml

    path = Path(path).resolve()
    for folder in path.parents:
        lock = folder / "dvc.lock"
        if not lock.is_file():
            continue
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage, body in stages.items():
            for out in body.get("outs", []):
                out_path = (folder / out["path"]).resolve()
                if out_path == path or out_path in path.parents:
                    return {"stage": stage, "path": out["path"], "md5": str(out.get("md5")),
                            "lock": str(lock)}
        return None
    return None


def content_version(root: Path) -> str:
    """Recompute a dataset folder's content hash from its files, as `write_dataset` computes it."""
    root = Path(root)
    spec = DatasetSpec.load(root / "spec.json")
    images = root / "images"
    files = {p.relative_to(images).as_posix(): p.read_bytes()
             for p in sorted(images.rglob("*")) if p.is_file()}
    both = table_digest(pd.read_parquet(root / spec.table)) + images_digest(files)
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def data_versions(ds: Dataset) -> dict[str, Any]:
    """The dataset's versions side by side: its manifest, its files now, and DVC's lock."""
    recomputed = content_version(ds.root)
    return {"dataset": ds.spec.name, "manifest_version": ds.version,
            "content_version": recomputed, "agree": recomputed == ds.version,
            "dvc": dvc_data_version(ds.root)}


def splits_digest(splits: Splits) -> str:
    """A short hash of the split table: two runs with one digest used the same rows and folds."""
    t = splits.table.sort_values("id")
    return hashlib.sha256(t.to_csv(index=False).encode()).hexdigest()[:16]


@dataclass
class TrackedRun:
    """Where `log_training` put a bundle: the run, the logged model and its registered version."""

    run_id: str
    experiment_id: str
    model_uri: str
    card: str = ""  # the model card logged with the run (the registered version's description)
    registered_name: str | None = None
    registered_version: str | None = None
    alias: str | None = None


def pip_requirements() -> list[str]:
    """What a pyfunc model needs: this package and the libraries a bundle is read with."""
    reqs = [f"modalfuse=={__version__}"]
    reqs += [f"{lib}=={v}" for lib, v in library_versions().items()
             if v and lib not in TRAINING_LIBRARIES]
    return reqs


def log_training(bundle: ModelBundle, ds: Dataset, splits: Splits, settings: Settings,
                 run_name: str | None = None) -> TrackedRun:
    """Log a trained bundle as one MLflow run (registering it is the caller's next step:
    `tracking.registry.log_and_register`).

    Logged: parameters, grouped-CV (per fold and summary) and test metrics, the per-class
    report, the confusion matrix, the split audit, the dataset (digest = its content
    version, with its source and DVC version), git commit, environment, the model card
    and the bundle itself as a pyfunc model.
    """
    import mlflow

    from modalfuse.inference.mlflow_pyfunc import BUNDLE_ARTIFACT, BundlePyfunc

    store = resolve_store(settings)
    card_path, facts = write_card(bundle, ds, splits)
    meta = bundle.meta
    git = git_info()
    dvc = dvc_data_version(ds.root)
    tags = {
        "modalfuse.version": __version__,
        "modalfuse.bundle_version": bundle.model_version,
        "modalfuse.dataset": ds.spec.name,
        "modalfuse.dataset_version": ds.version,
        "modalfuse.splits_digest": splits_digest(splits),
        "mlflow.source.git.commit": str(git["commit"] or "unknown"),
        "modalfuse.git_dirty": str(git["dirty"]),
    }
    if dvc:
        tags["modalfuse.dvc_md5"] = dvc["md5"]
        tags["modalfuse.dvc_stage"] = dvc["stage"]
    training = meta.get("training", {})
    params = flatten({"train": training.get("config", {}),
                      "model": {"kind": meta["model"]["kind"]},
                      "dataset": {"name": ds.spec.name, "version": ds.version,
                                  "target": ds.spec.target},
                      "split": splits.audit.get("params", {})})

    with training_run(store, ds.spec.name, run_name=run_name, tags=tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(params)
        _log_metrics(bundle)
        _log_dataset(ds, splits, dvc)
        eval_dir = bundle.path / "evaluation"
        if eval_dir.is_dir():
            mlflow.log_artifacts(str(eval_dir), "evaluation")
        mlflow.log_dict(facts["per_class"], "evaluation/per_class_test.json")
        mlflow.log_dict(facts["slices"], "evaluation/slices_test.json")
        mlflow.log_dict(splits.audit, "data/split_audit.json")
        mlflow.log_dict(ds.manifest, "data/manifest.json")
        if dvc:
            mlflow.log_dict(dvc, "data/dvc.json")
        env = environment()
        mlflow.log_text("\n".join(env.pop("packages")) + "\n", "environment/requirements.txt")
        mlflow.log_dict({**env, "git": git, "libraries": meta.get("libraries", {})},
                        "environment/environment.json")
        mlflow.log_artifact(str(card_path), "model_card")
        # MLflow logs warnings that do not apply here (pickled-by-reference model class, no
        # signature because the Predictor validates rows itself): keep the CLI output clean.
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)
        try:
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=BundlePyfunc(),
                artifacts={BUNDLE_ARTIFACT: str(bundle.path)},
                pip_requirements=pip_requirements(),
                tags={"modalfuse.bundle_version": bundle.model_version},
            )
        finally:
            pyfunc_log.setLevel(level)
        tracked = TrackedRun(run_id=run_id, experiment_id=run.info.experiment_id,
                             model_uri=info.model_uri, card=card_path.read_text())
    return tracked


def _log_metrics(bundle: ModelBundle) -> None:
    import mlflow

    metrics = bundle.metrics
    flat: dict[str, float] = {}
    for key, v in (metrics.get("cv") or {}).items():
        flat[f"cv_{key}_mean"], flat[f"cv_{key}_sd"] = v["mean"], v["sd"]
    for key, v in (metrics.get("test") or {}).items():
        if isinstance(v, int | float):
            flat[f"test_{key}"] = float(v)
    mlflow.log_metrics(flat)
    cv_file = bundle.path / "evaluation" / "cv.json"
    if cv_file.is_file():
        for fold in json.loads(cv_file.read_text()).get("folds", []):
            for key in ("accuracy", "macro_f1", "log_loss", "ece"):
                if key in fold:
                    mlflow.log_metric(f"cv_fold_{key}", float(fold[key]), step=int(fold["fold"]))
    per_class = bundle.path / "evaluation" / "metrics_test.json"
    if per_class.is_file():
        for label, rep in json.loads(per_class.read_text()).get("per_class", {}).items():
            mlflow.log_metric(metric_key(f"test_f1.{label}"), float(rep["f1"]))


def _log_dataset(ds: Dataset, splits: Splits, dvc: dict | None) -> None:
    import warnings

    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    source = ds.root.resolve().as_uri()
    tags = {"dvc_md5": dvc["md5"]} if dvc else {}
    with warnings.catch_warnings():
        # MLflow warns that a local URI matches two source types and that integer columns
        # cannot hold missing values; neither applies to a digest-identified table.
        warnings.simplefilter("ignore", UserWarning)
        full = from_pandas(ds.table, source=source, targets=ds.spec.target,
                           name=ds.spec.name, digest=ds.version)
        mlflow.log_input(full, context="dataset", tags={"version": ds.version, **tags})
    ids = ds.spec.id_column
    for split in ("train", "test"):
        rows = ds.table[ds.table[ids].isin(splits.ids(split))]
        digest = hashlib.sha256(f"{ds.version}:{split}:{splits_digest(splits)}".encode())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            part = from_pandas(rows, source=source, targets=ds.spec.target,
                               name=f"{ds.spec.name}-{split}", digest=digest.hexdigest()[:16])
            mlflow.log_input(part, context=split, tags={"dataset_version": ds.version})
