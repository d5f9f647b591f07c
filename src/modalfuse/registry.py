"""MLflow model registry: one registered model per dataset, aliases `champion` and `challenger`.

A new version becomes `champion` if there is none, else `challenger`. `promote` scores
challenger and champion on the same frozen test split through the Predictor and moves
`champion` only when the challenger is better by a stated margin; `rollback` moves it
back. `fetch_bundle` turns `models:/NAME@alias` (or `/VERSION`) into a local bundle.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalfuse.config import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from modalfuse.bundle import ModelBundle
    from modalfuse.data.dataset import Dataset
    from modalfuse.data.split import Splits

CHAMPION, CHALLENGER = "champion", "challenger"
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "weighted_f1": True,
                    "log_loss": False, "ece": False}
TAG_BUNDLE = "modalfuse.bundle_version"
TAG_PREVIOUS = "modalfuse.previous_champion"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (missing model/alias, unreachable store)."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> (name, alias, version)."""
    m = _URI.match(uri.strip())
    if not m:
        raise RegistryError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION "
                            "(e.g. models:/pokemon@champion)")
    return m["name"], m["alias"], m["version"]


def _client(settings: Settings) -> MlflowClient:
    from modalfuse.tracking import get_client

    return get_client(settings)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


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


def fetch_bundle(uri: str, settings: Settings) -> tuple[Path, dict[str, Any]]:
    """Download the bundle of a registered version (cached per registry and version) and say
    where it came from."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from modalfuse.bundle import BUNDLE_FILE
    from modalfuse.tracking import registry_uri, using_store

    name, alias, version = parse_model_uri(uri)
    client = _client(settings)
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, str(version)))
    except MlflowException as e:
        raise RegistryError(f"cannot resolve {uri} in the registry at "
                            f"{registry_uri(settings)}: {e.message}") from None
    # Keyed by registry too: version 3 of one registry is not version 3 of another.
    where = hashlib.sha256(registry_uri(settings).encode()).hexdigest()[:8]
    dest = settings.mlflow_dir / "serving" / f"{name}-v{mv.version}-{where}"
    if not any(dest.glob(f"artifacts/*/{BUNDLE_FILE}")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-v{mv.version}-", dir=dest.parent))
        try:
            with using_store(settings):
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                                    dst_path=str(tmp))
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = sorted(dest.glob(f"artifacts/*/{BUNDLE_FILE}"))
    if not found:
        raise RegistryError(f"{name} version {mv.version} has no modalfuse bundle among its "
                            "artifacts; register models with `modalfuse train`")
    info = {"uri": uri, "name": name, "alias": alias, "version": str(mv.version),
            "run_id": mv.run_id}
    return found[0].parent, info


@dataclass
class Candidate:
    version: str
    bundle_version: str
    dataset_version: str | None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    metric: str
    margin: float
    challenger: Candidate | None = None
    champion: Candidate | None = None
    plot: str | None = None  # PNG comparing the two, per class

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(uri: str, settings: Settings, ds: Dataset, splits: Splits) -> Candidate:
    from modalfuse.bundle import load_bundle
    from modalfuse.evaluate import evaluate
    from modalfuse.predict import Predictor

    path, info = fetch_bundle(uri, settings)
    bundle = load_bundle(path)
    dv = bundle.meta.get("dataset", {}).get("version")
    cand = Candidate(version=info["version"], bundle_version=bundle.model_version,
                     dataset_version=dv, run_id=info["run_id"])
    if dv == ds.version:
        result = evaluate(Predictor(bundle), ds, splits.ids("test"), None, "test")
        cand.metrics = {k: float(v) for k, v in result["metrics"].items() if k != "n"}
        cand.per_class = result["per_class"]
    return cand


def plot_comparison(name: str, challenger: Candidate, champion: Candidate, metric: str,
                    path: Path) -> Path:
    """Per-class F1 of challenger and champion side by side, the gate's metric in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted(set(challenger.per_class) | set(champion.per_class))
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 2), 4.5))
    for offset, c, who in ((-0.2, champion, "champion"), (0.2, challenger, "challenger")):
        f1 = [c.per_class.get(lab, {}).get("f1", 0.0) for lab in labels]
        ax.bar(x + offset, f1, width=0.4,
               label=f"{who} v{c.version} ({metric} {c.metrics.get(metric, float('nan')):.3f})")
    ax.set_xticks(x, labels, rotation=60, ha="right")
    ax.set_ylabel("F1 on the frozen test split")
    ax.set_ylim(0, 1.2)  # room for the legend above the bars
    ax.set_title(f"{name}: challenger v{challenger.version} vs champion v{champion.version}")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def promote(settings: Settings, name: str, ds: Dataset, splits: Splits,
            metric: str = "macro_f1", margin: float = 0.01) -> PromotionDecision:
    """Move `champion` to `challenger` only if it scores better by `margin` on the frozen test split."""
    if metric not in HIGHER_IS_BETTER:
        raise RegistryError(f"unknown metric {metric!r}; choose one of {sorted(HIGHER_IS_BETTER)}")
    if margin < 0:
        raise RegistryError(f"margin must be >= 0, got {margin}")
    client = _client(settings)
    chall = alias_version(client, name, CHALLENGER)
    champ = alias_version(client, name, CHAMPION)
    if chall is None:
        return PromotionDecision(False, f"model {name!r} has no {CHALLENGER!r}: train one with "
                                        "`modalfuse train` first", metric, margin)
    challenger = _score(f"models:/{name}/{chall.version}", settings, ds, splits)
    if champ is None:
        decision = PromotionDecision(True, "no champion yet: the challenger becomes champion",
                                     metric, margin, challenger)
        _apply(client, name, decision, None)
        return decision
    if champ.version == chall.version:
        return PromotionDecision(False, f"challenger and champion are both version "
                                        f"{chall.version}", metric, margin, challenger)
    champion = _score(f"models:/{name}/{champ.version}", settings, ds, splits)
    for who, c in (("challenger", challenger), ("champion", champion)):
        if c.dataset_version != ds.version:
            return PromotionDecision(
                False, f"{who} (version {c.version}) was trained on dataset version "
                       f"{c.dataset_version}, but the frozen data here is version {ds.version}: "
                       "the two cannot be compared on the same data; retrain it on this version",
                metric, margin, challenger, champion)
    plot = plot_comparison(name, challenger, champion, metric, settings.reports_dir
                           / f"promotion_{name}_v{challenger.version}_vs_v{champion.version}.png")
    if challenger.run_id:
        client.log_artifact(challenger.run_id, str(plot), "promotion")
    a, b = challenger.metrics[metric], champion.metrics[metric]
    gain = (a - b) if HIGHER_IS_BETTER[metric] else (b - a)
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    if gain >= margin:
        decision = PromotionDecision(
            True, f"challenger {metric} {a:.4f} vs champion {b:.4f} on the frozen test split of "
                  f"dataset version {ds.version}: {gain:+.4f} ({better} is better) meets the "
                  f"margin {margin}", metric, margin, challenger, champion)
    else:
        decision = PromotionDecision(
            False, f"challenger {metric} {a:.4f} vs champion {b:.4f} on the frozen test split of "
                   f"dataset version {ds.version}: {gain:+.4f} ({better} is better) is below the "
                   f"margin {margin}; champion stays version {champ.version}",
            metric, margin, challenger, champion)
    decision.plot = str(plot)
    _apply(client, name, decision, champ.version)
    return decision


def _apply(client: MlflowClient, name: str, d: PromotionDecision, old: str | None) -> None:
    assert d.challenger is not None
    v = d.challenger.version
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, v, "modalfuse.promotion",
                                 f"{'promoted' if d.promoted else 'refused'} {stamp}: {d.reason}"[:5000])
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
