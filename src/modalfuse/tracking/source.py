"""Where a model comes from: a registry URI (`models:/NAME@champion`) or a bundle folder.

Serving follows the registry: with nothing named, every command that scores (serve,
predict, explain, evaluate, monitor, bench, the UI) uses `models:/<dataset>@champion`
when the dataset has a registered champion, else the dataset's latest bundle. Training
never changes what is served; `promote`, `rollback` and `/admin/reload` do. The registry
is consulted at start and on every `/admin/reload`, so moving the `champion` alias and
reloading is how a new model goes live.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalfuse.config import Settings
from modalfuse.errors import InvalidInput
from modalfuse.inference.predictor import Predictor
from modalfuse.tracking.registry import alias_version, fetch_bundle, mlflow_installed
from modalfuse.tracking.rest import RestRegistry
from modalfuse.tracking.rest import usable as rest_usable
from modalfuse.tracking.runs import EMBEDDED_DB, get_client, registry_uri

log = logging.getLogger(__name__)
CHAMPION = "champion"


@dataclass(frozen=True)
class ModelChoice:
    """The model a command will use and why: exactly one of `uri` and `bundle` is set."""

    uri: str | None
    bundle: Path | None
    chosen_by: str  # what decided it, in words (a flag, a setting, the registry's alias)
    fallback: bool = False  # nothing named and no champion: the latest bundle, for now

    def describe(self) -> str:
        """The chosen model and what chose it, for logs and `/v1/model`."""
        return f"{self.uri or self.bundle} ({self.chosen_by})"


def registered_champion(settings: Settings, dataset: str) -> str | None:
    """`models:/<dataset>@champion` if the registry has that alias, else None.

    The embedded store is only read when it exists (nothing is created by asking); a
    registry that cannot be read counts as no champion. Without MLflow's client a server is
    read over REST (`tracking/rest.py`), and a local store counts as none.
    """
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (settings.mlflow_dir / EMBEDDED_DB).exists():
        return None
    try:
        mv: object | None
        if mlflow_installed():
            mv = alias_version(get_client(settings), dataset, CHAMPION)
        elif rest_usable(registry_uri(settings)):  # the lean serve install: MLflow over REST
            mv = RestRegistry(registry_uri(settings)).version_by_alias(dataset, CHAMPION)
        else:
            return None  # an sqlite store without MLflow's client: nothing to read it with
    except Exception as e:  # an unreachable or broken store: say so, fall back to the bundle
        log.warning("cannot read the model registry (%s: %s); using the latest bundle",
                    type(e).__name__, e)
        return None
    return f"models:/{dataset}@{CHAMPION}" if mv is not None else None


def choose_model(settings: Settings, dataset: str, model_uri: str | None = None,
                 bundle: Path | None = None) -> ModelChoice:
    """What to score with: a flag wins, then MODALFUSE_MODEL_URI / MODALFUSE_BUNDLE, then the
    registry's champion of `dataset`, then the dataset's latest bundle."""
    if model_uri:
        return ModelChoice(model_uri, None, "--model-uri")
    if bundle is not None:
        return ModelChoice(None, Path(bundle), "--bundle")
    if settings.model_uri:
        return ModelChoice(settings.model_uri, None, "MODALFUSE_MODEL_URI")
    if settings.bundle is not None:
        return ModelChoice(None, settings.bundle, "MODALFUSE_BUNDLE")
    dataset = settings.dataset_dir(dataset).name  # an empty name: the error that says how to choose
    champion = registered_champion(settings, dataset)
    if champion:
        return ModelChoice(champion, None, f"the registry's {CHAMPION} of {dataset!r}")
    return ModelChoice(None, settings.default_bundle(dataset),
                       f"no {CHAMPION} registered for {dataset!r}: the latest bundle", fallback=True)


def pinned_settings(settings: Settings, choice: ModelChoice) -> Settings:
    """Settings that name the chosen model, so a reload re-resolves the same alias. A fallback
    (no champion yet) pins nothing: a reload then chooses again, and finds a new champion."""
    if choice.fallback:
        return settings
    return settings.model_copy(update={"model_uri": choice.uri,
                                       "bundle": None if choice.uri else choice.bundle})


def resolve_bundle(settings: Settings, choice: ModelChoice) -> tuple[Path, dict[str, Any]]:
    """The local bundle folder of a choice and a description of its source."""
    if choice.uri:
        path, info = fetch_bundle(choice.uri, settings)
        return path, {"source": "registry", **info, "bundle": str(path),
                      "chosen_by": choice.chosen_by}
    assert choice.bundle is not None
    return choice.bundle, {"source": "bundle", "uri": None, "name": None, "alias": None,
                           "version": None, "run_id": None, "bundle": str(choice.bundle),
                           "chosen_by": choice.chosen_by}


def load_served_predictor(settings: Settings, model_uri: str | None = None,
                          bundle: Path | None = None) -> tuple[Predictor, dict[str, Any]]:
    """The Predictor to serve and a description of its source (uri, name, version, alias, path).

    Explicit arguments win over settings; a model URI wins over a bundle path.
    """
    uri = model_uri or (None if bundle else settings.model_uri)
    path = bundle or settings.bundle
    if uri:
        choice = ModelChoice(uri, None, "model_uri" if model_uri else "MODALFUSE_MODEL_URI")
    elif path is not None:
        choice = ModelChoice(None, Path(path), "bundle" if bundle else "MODALFUSE_BUNDLE")
    else:
        raise InvalidInput("no model to serve: set MODALFUSE_MODEL_URI (e.g. "
                           "models:/DATASET@champion) or MODALFUSE_BUNDLE (a bundle folder)")
    return load_choice(settings, choice)


def load_predictor(settings: Settings, dataset: str, model_uri: str | None = None,
                   bundle: Path | None = None) -> tuple[Predictor, dict[str, Any]]:
    """The Predictor a command scores with (see `choose_model`) and where it came from."""
    return load_choice(settings, choose_model(settings, dataset, model_uri, bundle))


def load_choice(settings: Settings, choice: ModelChoice) -> tuple[Predictor, dict[str, Any]]:
    """Load a chosen model as a Predictor, with the description of its source."""
    path, source = resolve_bundle(settings, choice)
    predictor = Predictor.from_path(path, max_image_bytes=settings.max_image_bytes,
                                    max_image_pixels=settings.max_image_pixels)
    return predictor, {**source, "model_version": predictor.model_version}


def describe_source(source: dict[str, Any]) -> str:
    """One line for a start-up message: what is served and why."""
    version = source.get("model_version")
    if source.get("source") == "registry":
        return (f"model {version} from {source.get('uri')} (registered model "
                f"{source.get('name')!r} version {source.get('version')}, bundle "
                f"{source.get('bundle')}; chosen by {source.get('chosen_by')})")
    return f"model {version} from bundle {source.get('bundle')} (chosen by {source.get('chosen_by')})"



def bundle_for(settings: Settings, dataset: str, bundle: Path | None = None,
               model_uri: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The local bundle folder a command should score with (see `choose_model`), and its source."""
    return resolve_bundle(settings, choose_model(settings, dataset, model_uri, bundle))
