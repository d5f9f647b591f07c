"""Dependencies injected into routes: the served model, its holder and the settings.

`ServedModelDep` is read once per request (FastAPI caches a dependency within a request),
so a route uses one model from start to end even when a reload swaps it meanwhile.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modalfuse.config import Settings
from modalfuse.serve.state import ModelHolder, ServedModel


def get_model_holder(request: Request) -> ModelHolder:
    """The app's model holder (what `/admin/reload` swaps)."""
    return request.app.state.model_holder


def get_served_model(request: Request) -> ServedModel:
    """The model served now, taken once for the whole request."""
    return get_model_holder(request).current


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


ModelHolderDep = Annotated[ModelHolder, Depends(get_model_holder)]
ServedModelDep = Annotated[ServedModel, Depends(get_served_model)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
