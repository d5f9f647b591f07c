"""Dependencies injected into routes: the loaded Predictor and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modalfuse.config import Settings
from modalfuse.inference.predictor import Predictor


def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
