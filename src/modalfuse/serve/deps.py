"""Dependencies injected into routes: the served model, its holder, the releases and settings.

They are `async def`: FastAPI would run a plain function in its thread pool, a thread hop
per dependency per request for what is an attribute read.

`ServedModelDep` is read once per request (FastAPI caches a dependency within a request),
so a route uses one model from start to end even when a reload swaps it meanwhile. It is the
model that answers this client: the canary's for the clients a canary release holds (sticky
by client key, `serve/canary.py`), else the champion. `ChampionDep` is always the champion,
for what the job worker scores later.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modalfuse.config import Settings
from modalfuse.serve.canary import CanaryRelease, client_key
from modalfuse.serve.shadow import ShadowRelease
from modalfuse.serve.state import ModelHolder, ServedModel


async def get_model_holder(request: Request) -> ModelHolder:
    """The app's model holder (what `/admin/reload` swaps)."""
    return request.app.state.model_holder


async def get_canary(request: Request) -> CanaryRelease:
    """The app's canary release (running or not)."""
    return request.app.state.canary


async def get_shadow(request: Request) -> ShadowRelease:
    """The app's shadow release (running or not)."""
    return request.app.state.shadow


def served_model_for(request: Request) -> ServedModel:
    """The model that answers this request: the canary's for a client the canary holds, else
    the champion (a plain function, for the hot route that reads it without injection)."""
    canary: CanaryRelease | None = getattr(request.app.state, "canary", None)
    if canary is None or canary.current is None:
        return request.app.state.model_holder.current
    return canary.model_for(client_key(request))


async def get_served_model(request: Request) -> ServedModel:
    """The model that answers this request (`served_model_for`), taken once for the whole
    request."""
    return served_model_for(request)


async def get_champion(request: Request) -> ServedModel:
    """The champion served now, whoever asks (a canary never answers for it)."""
    return request.app.state.model_holder.current


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


ModelHolderDep = Annotated[ModelHolder, Depends(get_model_holder)]
ServedModelDep = Annotated[ServedModel, Depends(get_served_model)]
ChampionDep = Annotated[ServedModel, Depends(get_champion)]
CanaryDep = Annotated[CanaryRelease, Depends(get_canary)]
ShadowDep = Annotated[ShadowRelease, Depends(get_shadow)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
