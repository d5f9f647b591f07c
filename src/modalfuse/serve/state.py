"""The served model: one `ServedModel` (predictor, explainer, version, source), swapped whole.

A `ModelHolder` owns the app's current `ServedModel`. Readers take `holder.current` once
per request (routes through `deps.ServedModelDep`, the job worker at claim time, the UI per
call) and use that one object to the end, so a request never mixes two models. A reload
loads the new model first, checks it takes the same inputs, then swaps it in with one
attribute assignment; requests in flight finish on the model they started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modalfuse.config import Settings
from modalfuse.errors import ModelError
from modalfuse.inference.bundle import BundleError
from modalfuse.inference.explain import Explainer
from modalfuse.inference.predictor import PredictionEvent, Predictor
from modalfuse.spec import DatasetSpec
from modalfuse.tracking.registry import RegistryError
from modalfuse.tracking.source import load_predictor, load_served_predictor

log = logging.getLogger("modalfuse.serve")

PredictionObserver = Callable[[PredictionEvent], None]


@dataclass(frozen=True)
class ServedModel:
    """Everything serving needs about one model: its Predictor, its (lazy) Explainer, its
    version and bundle digest, where it came from and when it was loaded."""

    predictor: Predictor
    source: dict[str, Any]  # where it came from (registry URI, bundle path, who chose it)
    version: str
    digest: str  # of the bundle: async jobs check it, so one model scores all of a job
    loaded_at: datetime
    # The explainer is built on first use (most servers never explain); once per model.
    _explainers: list[Explainer] = field(default_factory=list, init=False, repr=False,
                                         compare=False)
    _explainer_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                            compare=False)

    @classmethod
    def of(cls, predictor: Predictor, source: dict[str, Any]) -> ServedModel:
        """The served model of a loaded Predictor and the description of its source."""
        return cls(predictor=predictor, source={**source, "model_version": predictor.model_version},
                   version=predictor.model_version, digest=predictor.bundle.model_digest,
                   loaded_at=datetime.now(UTC))

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec the model takes its inputs from."""
        return self.predictor.spec

    @property
    def explainer(self) -> Explainer:
        """The Explainer of this model, made on first use from its own Predictor."""
        if not self._explainers:
            with self._explainer_lock:
                if not self._explainers:
                    self._explainers.append(Explainer.for_bundle(self.predictor))
        return self._explainers[0]


class ReloadError(ModelError):
    """A reload that did not happen; the model served before it is still served."""


class ReloadInProgress(ReloadError):
    """Another reload is running; this one was refused rather than queued."""


class ModelLoadFailed(ReloadError):
    """The new model could not be loaded (a bad URI, alias or bundle)."""


class RegistryUnavailable(ReloadError):
    """The registry could not be reached (a transport error) while loading the new model."""


class IncompatibleModel(ReloadError):
    """The new model takes other inputs than the served one (the request schemas are fixed
    when the app starts)."""


@dataclass(frozen=True)
class Reload:
    """What a reload swapped: the model served before it and the one served now."""

    previous: ServedModel
    current: ServedModel

    @property
    def changed(self) -> bool:
        """Whether the served model version changed."""
        return self.current.version != self.previous.version


ReloadListener = Callable[[Reload], None]


class ModelHolder:
    """Owns the app's current `ServedModel` and swaps it whole on `reload`.

    Prediction observers (metrics, the prediction log) are registered once with `observe`;
    every model the holder serves notifies them, so nothing is rewired on a reload. Reload
    listeners (`on_reload`) hear of every swap: a canary or shadow release whose model has
    just become the champion ends there.
    """

    def __init__(self, settings: Settings, model: ServedModel):
        self.settings = settings  # pinned by the caller: a reload re-resolves the same choice
        self.observers: list[PredictionObserver] = []
        self.reload_listeners: list[ReloadListener] = []
        self._reload_lock = threading.Lock()  # one reload at a time; readers never wait on it
        self._current = self.attach(model)

    @property
    def current(self) -> ServedModel:
        """The model served now; take it once per request and use it to the end."""
        return self._current

    def observe(self, observer: PredictionObserver) -> None:
        """Call `observer` after every scored call of every model this holder serves."""
        self.observers.append(observer)

    def on_reload(self, listener: ReloadListener) -> None:
        """Call `listener` with every `Reload` after its swap (never for a refused reload)."""
        self.reload_listeners.append(listener)

    def reload(self, model_uri: str | None = None, bundle: Path | None = None) -> Reload:
        """Load the model to serve again and swap it in whole; raises a `ReloadError` (the
        old model still served) when it cannot.

        Explicit arguments win; otherwise the server's own choice is re-resolved (a pinned
        URI's alias, a pinned bundle), and a server started with nothing named chooses again
        (the registry's champion if there is one now, else the latest bundle).
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgress("a reload is already in progress; try again")
        try:
            old = self._current
            predictor, source = self._load(old, model_uri, bundle)
            self.check_inputs(predictor)
            new = self.attach(ServedModel.of(predictor, source))
            self._current = new  # the swap: one atomic assignment
            done = Reload(previous=old, current=new)
        finally:
            self._reload_lock.release()
        for listener in self.reload_listeners:
            try:
                listener(done)
            except Exception:  # a listener's bug must not turn a done swap into an error
                log.exception("reload listener %r failed", listener)
        return done

    def load_challenger(self, model_uri: str | None = None, bundle: Path | None = None, *,
                        observed: bool) -> ServedModel:
        """Load a model to serve beside the champion (a canary, a shadow), checked to take the
        same inputs; `observed` attaches the holder's observers (metrics, prediction log).

        With nothing named it loads what a reload would (the server's alias re-resolved: after
        `modalfuse promote`, the new champion). Raises `ModelLoadFailed`, `RegistryUnavailable`
        or `IncompatibleModel`, as a reload does.
        """
        predictor, source = self._load(self._current, model_uri, bundle)
        self.check_inputs(predictor)
        model = ServedModel.of(predictor, source)
        return self.attach(model) if observed else model

    def check_inputs(self, predictor: Predictor) -> None:
        """Raise `IncompatibleModel` unless `predictor` takes the inputs the served model takes
        (the request schemas were built from those when the app started)."""
        served = self._current
        if _inputs(predictor.spec) != _inputs(served.spec):
            raise IncompatibleModel(
                f"the new model {predictor.model_version} takes different inputs (dataset "
                f"spec) than the served {served.version}; restart the API to change schemas")

    def _load(self, old: ServedModel, model_uri: str | None,
              bundle: Path | None) -> tuple[Predictor, dict[str, Any]]:
        # mlflow is an optional extra: its error class is imported only when a reload runs.
        s = self.settings
        try:
            if model_uri or bundle or s.model_uri or s.bundle:
                return load_served_predictor(s, model_uri, bundle)
            return load_predictor(s, old.spec.name)  # nothing named: choose again
        except (RegistryError, BundleError, FileNotFoundError, ValueError) as e:
            raise ModelLoadFailed(f"could not load the new model ({e}); still serving "
                                  f"{old.version}") from None
        except Exception as e:  # the registry's transport errors: still a clear answer
            raise RegistryUnavailable(f"registry unavailable ({type(e).__name__}: {e}); still "
                                      f"serving {old.version}") from None

    def attach(self, model: ServedModel) -> ServedModel:
        """Make `model`'s predictor notify this holder's observers; returns the model.

        The list is shared, not copied, so an observer added later reaches it too; an
        earlier app's observers are dropped.
        """
        model.predictor.observers = self.observers
        return model


def _inputs(spec: DatasetSpec) -> tuple:
    # What the request schemas were built from when the app started.
    return spec.target, spec.image_size, [f.model_dump() for f in spec.fields]
