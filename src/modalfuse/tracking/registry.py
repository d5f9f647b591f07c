"""MLflow model registry: one registered model per dataset, aliases `champion` and `challenger`.

A new version becomes `champion` if there is none, else `challenger`. `promote` fetches
both, asks the promotion gate (`tracking/gate.py`: grouped-CV out-of-fold predictions, a
paired bootstrap of the macro-F1 gain; the test split only reports) and moves `champion`
only when it says so, recording the decision on the version; `rollback` moves it back.
`fetch_bundle` turns `models:/NAME@alias` (or `/VERSION`) into a local bundle, and `trace`
finds the registered versions of a served model version.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalfuse.config import Settings, installed
from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import RegistryError
from modalfuse.inference.bundle import BUNDLE_FILE, ModelBundle, load_bundle
from modalfuse.tracking.gate import GATE_TEXT, Candidate, Gate, PromotionDecision
from modalfuse.tracking.rest import RestRegistry, RestRegistryError
from modalfuse.tracking.runs import (
    TrackedRun,
    get_client,
    log_training,
    registry_uri,
    resolve_store,
    using_store,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_BUNDLE = "modalfuse.bundle_version"
TAG_PREVIOUS = "modalfuse.previous_champion"
TAG_GATE = "modalfuse.promotion_on"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> (name, alias, version)."""
    m = _URI.match(uri.strip())
    if not m:
        raise RegistryError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION "
                            "(e.g. models:/DATASET@champion)")
    return m["name"], m["alias"], m["version"]


def _client(settings: Settings) -> MlflowClient:
    return get_client(settings)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version of `name` that holds `alias`, or None when no version does."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def log_and_register(bundle: ModelBundle, ds: Dataset, splits: Splits, settings: Settings,
                     run_name: str | None = None) -> TrackedRun:
    """Log a trained bundle as an MLflow run, then register it as a version of the dataset's
    model (`champion` when it is the first, else `challenger`)."""
    tracked = log_training(bundle, ds, splits, settings, run_name=run_name)
    store = resolve_store(settings)
    with using_store(store):
        mv, alias = register_version(get_client(store), ds.spec.name, tracked.model_uri,
                                     tracked.run_id, bundle, tracked.card)
    tracked.registered_name, tracked.registered_version, tracked.alias = (
        ds.spec.name, str(mv.version), alias)
    return tracked


def register_version(client: MlflowClient, name: str, model_uri: str, run_id: str,
                     bundle: ModelBundle, card: str) -> tuple[ModelVersion, str]:
    """Register a logged model as a new version of `name`; returns it and the alias it got."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"modalfuse models of dataset `{name}` ({bundle.spec.target}); "
                              "aliases: champion (served), challenger (candidate).")
    ds = bundle.meta.get("dataset", {})
    mv = mlflow.register_model(model_uri, name, tags={
        TAG_BUNDLE: bundle.model_version, "modalfuse.dataset_version": str(ds.get("version")),
        "modalfuse.run_id": run_id})
    client.update_model_version(name, mv.version,
                                description=f"Registered as `{name}` version {mv.version}.\n\n"
                                            + card)
    alias = CHALLENGER if alias_version(client, name, CHAMPION) else CHAMPION
    client.set_registered_model_alias(name, alias, mv.version)
    return mv, alias


def mlflow_installed() -> bool:
    """Whether MLflow's client is importable (the lean serve install has none: it reads the
    registry over REST, `tracking/rest.py`)."""
    return installed("mlflow")


def _resolve_version(uri: str, settings: Settings) -> tuple[str, str | None, str, str | None]:
    """(name, alias, version, run_id) of a `models:/` URI, by MLflow's client or over REST."""
    name, alias, version = parse_model_uri(uri)
    if not mlflow_installed():
        rest = RestRegistry(registry_uri(settings))
        try:
            rv = (rest.version_by_alias(name, alias) if alias
                  else rest.version(name, str(version)))
        except RestRegistryError as e:
            raise RegistryError(f"cannot resolve {uri}: {e}") from None
        if rv is None:
            raise RegistryError(f"cannot resolve {uri} in the registry at {rest.base}: "
                                f"no version of {name!r} holds the alias {alias!r}")
        return name, alias, rv.version, rv.run_id
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, str(version)))
    except MlflowException as e:
        raise RegistryError(f"cannot resolve {uri} in the registry at "
                            f"{registry_uri(settings)}: {e.message}") from None
    return name, alias, str(mv.version), mv.run_id


def _download_version(name: str, version: str, settings: Settings, dest: Path) -> None:
    if not mlflow_installed():
        try:
            RestRegistry(registry_uri(settings)).download(name, version, dest)
        except RestRegistryError as e:
            raise RegistryError(f"cannot download {name} version {version}: {e}") from None
        return
    import mlflow

    with using_store(settings):
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                            dst_path=str(dest))


def fetch_bundle(uri: str, settings: Settings) -> tuple[Path, dict[str, Any]]:
    """Download the bundle of a registered version (cached per registry and version) and say
    where it came from. With MLflow's client installed it does the reading; without it (the
    lean serve install) an MLflow server is read over its REST API."""
    name, alias, version, run_id = _resolve_version(uri, settings)
    # Keyed by registry too: version 3 of one registry is not version 3 of another.
    where = hashlib.sha256(registry_uri(settings).encode()).hexdigest()[:8]
    dest = settings.mlflow_dir / "serving" / f"{name}-v{version}-{where}"
    if not any(dest.glob(f"artifacts/*/{BUNDLE_FILE}")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-v{version}-", dir=dest.parent))
        try:
            _download_version(name, version, settings, tmp)
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = sorted(dest.glob(f"artifacts/*/{BUNDLE_FILE}"))
    if not found:
        raise RegistryError(f"{name} version {version} has no modalfuse bundle among its "
                            "artifacts; register models with `modalfuse train`")
    info = {"uri": uri, "name": name, "alias": alias, "version": version, "run_id": run_id}
    return found[0].parent, info


def _candidate(uri: str, settings: Settings) -> tuple[Candidate, ModelBundle]:
    path, info = fetch_bundle(uri, settings)
    bundle = load_bundle(path)
    cand = Candidate(version=info["version"], bundle_version=bundle.model_version,
                     dataset_version=bundle.meta.get("dataset", {}).get("version"),
                     run_id=info["run_id"],
                     folds_digest=(bundle.meta.get("cv_oof") or {}).get("folds_digest"))
    return cand, bundle


def promote(settings: Settings, name: str, ds: Dataset, splits: Splits,
            metric: str = "macro_f1", margin: float = 0.01, on: str = "cv",
            confidence: float = 0.90, resamples: int = 2000, seed: int = 0) -> PromotionDecision:
    """Move `champion` to `challenger` only when it is better by `margin`, chosen without test.

    `on="cv"` (the default): both versions must have been cross-validated on the same folds of
    the same dataset version; a paired bootstrap over their out-of-fold rows gives the
    macro-F1 gain and its `confidence` interval, and the challenger wins only when the lower
    end clears `margin`. `on="test"` compares `metric` on the frozen test split instead, and
    is recorded on the registered version: choosing on test, again and again, is selection
    on the data used to judge. The test split is scored either way, as a report.
    """
    gate = Gate(metric, margin, on, confidence, resamples, seed)  # RegistryError when unsafe
    client = _client(settings)
    chall = alias_version(client, name, CHALLENGER)
    champ = alias_version(client, name, CHAMPION)
    if chall is None:
        return gate.refuse(f"model {name!r} has no {CHALLENGER!r}: train one with "
                           "`modalfuse train` first")
    challenger, cb = _candidate(f"models:/{name}/{chall.version}", settings)
    if champ is None:
        challenger.score_test(cb, ds, splits)
        decision = PromotionDecision(True, "no champion yet: the challenger becomes champion",
                                     metric, margin, challenger, on=on)
        _apply(client, name, decision, None)
        return decision
    if champ.version == chall.version:
        return gate.refuse(f"challenger and champion are both version {chall.version}",
                           challenger)
    champion, hb = _candidate(f"models:/{name}/{champ.version}", settings)
    plot = settings.reports_dir / f"promotion_{name}_v{challenger.version}_vs_v{champion.version}.png"
    decision = gate.decide(name, challenger, champion, cb, hb, ds, splits, plot)
    if decision.plot and challenger.run_id:
        client.log_artifact(challenger.run_id, decision.plot, "promotion")
    _apply(client, name, decision, champ.version)
    return decision


def _apply(client: MlflowClient, name: str, d: PromotionDecision, old: str | None) -> None:
    assert d.challenger is not None
    v = d.challenger.version
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, v, "modalfuse.promotion",
                                 f"{'promoted' if d.promoted else 'refused'} {stamp}: {d.reason}"[:5000])
    # What chose: out-of-fold predictions, or (asked for with --on test) the test split.
    client.set_model_version_tag(name, v, TAG_GATE, GATE_TEXT[d.on])
    if not d.promoted:
        return
    if old is not None:
        client.set_model_version_tag(name, v, TAG_PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, v)
    client.delete_registered_model_alias(name, CHALLENGER)


def rollback(settings: Settings, name: str, to_version: str | None = None) -> tuple[str, str]:
    """Move `champion` back to the version it replaced (or to `to_version`); returns (from, to)."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    champ = alias_version(client, name, CHAMPION)
    if champ is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    target = to_version or champ.tags.get(TAG_PREVIOUS)
    if not target:
        raise RegistryError(f"champion version {champ.version} of {name!r} replaced no earlier "
                            "champion; pass --to VERSION to choose one")
    if str(target) == str(champ.version):
        raise RegistryError(f"version {target} is already the champion")
    try:
        client.get_model_version(name, str(target))
    except MlflowException:
        versions = sorted(int(m.version) for m in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{name!r} has no version {target}; versions: {versions}") from None
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, champ.version, "modalfuse.rolled_back",
                                 f"{stamp}: champion moved back to version {target}")
    client.set_registered_model_alias(name, CHAMPION, str(target))
    return str(champ.version), str(target)


def _aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    # Search results do not carry aliases in every store; the registered model does.
    aliases = client.get_registered_model(name).aliases or {}
    return sorted(a for a, v in aliases.items() if str(v) == version)


def trace(settings: Settings, model_version: str) -> list[dict[str, Any]]:
    """Registered versions whose bundle is `model_version` (what the API reports), with lineage."""
    client = _client(settings)
    out = []
    for mv in client.search_model_versions(f"tags.`{TAG_BUNDLE}` = '{model_version}'"):
        run = client.get_run(mv.run_id) if mv.run_id else None
        tags = run.data.tags if run else {}
        inputs = []
        if run and run.inputs:
            for di in run.inputs.dataset_inputs:
                inputs.append({"name": di.dataset.name, "digest": di.dataset.digest,
                               "source": di.dataset.source,
                               "context": {t.key: t.value for t in di.tags}})
        out.append({
            "registered_model": mv.name, "version": str(mv.version),
            "aliases": _aliases_of(client, mv.name, str(mv.version)),
            "run_id": mv.run_id, "experiment_id": run.info.experiment_id if run else None,
            "git_commit": tags.get("mlflow.source.git.commit"),
            "git_dirty": tags.get("modalfuse.git_dirty"),
            "dataset": tags.get("modalfuse.dataset"),
            "dataset_version": tags.get("modalfuse.dataset_version"),
            "splits_digest": tags.get("modalfuse.splits_digest"),
            "dvc_md5": tags.get("modalfuse.dvc_md5"),
            "params": dict(run.data.params) if run else {},
            "inputs": inputs,
        })
    return out
