"""Admin routes (API key required): swap the served model without dropping requests.

A reload loads the new Predictor first, off the event loop, then replaces
`app.state.predictor` in one assignment. Each request reads the predictor once, so a
request in flight finishes on the model it started with and no request sees a half-swap.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from modalfuse.inference.bundle import BundleError
from modalfuse.serve.deps import PredictorDep, SettingsDep
from modalfuse.serve.security import AuthDep


class ReloadRequest(BaseModel):
    model_uri: str | None = Field(default=None, description="models:/NAME@ALIAS or "
                                  "models:/NAME/VERSION; default: what the server serves "
                                  "(its alias re-resolved; a server that fell back to the latest "
                                  "bundle chooses again: the champion if there is one now)")
    bundle: str | None = Field(default=None, description="a bundle folder on the server")


class ReloadResponse(BaseModel):
    previous_model_version: str
    model_version: str
    changed: bool
    source: dict[str, Any]


def build_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])
    lock = threading.Lock()  # one reload at a time; predictions never wait on it

    @router.post("/reload", response_model=ReloadResponse,
                 summary="Reload the model (re-resolving its registry alias) and swap it in")
    def reload(request: Request, _: AuthDep, current: PredictorDep, settings: SettingsDep,
               body: ReloadRequest | None = None) -> ReloadResponse:
        from modalfuse.tracking.registry import RegistryError
        from modalfuse.tracking.source import load_predictor, load_served_predictor

        body = body or ReloadRequest()
        if not lock.acquire(blocking=False):
            raise HTTPException(409, detail="a reload is already in progress; try again")
        try:
            try:
                if body.model_uri or body.bundle or settings.model_uri or settings.bundle:
                    new, source = load_served_predictor(
                        settings, body.model_uri, Path(body.bundle) if body.bundle else None)
                else:  # started with nothing named: choose again (a champion may exist now)
                    new, source = load_predictor(settings, current.spec.name)
            except (RegistryError, BundleError, FileNotFoundError, ValueError) as e:
                raise HTTPException(409, detail=f"could not load the new model ({e}); still "
                                                f"serving {current.model_version}") from None
            except Exception as e:  # the registry's transport errors: still a clear answer
                raise HTTPException(503, detail=f"registry unavailable ({type(e).__name__}: "
                                                f"{e}); still serving {current.model_version}"
                                    ) from None
            old = request.app.state.predictor
            if _inputs(new.spec) != _inputs(old.spec):
                raise HTTPException(409, detail=(
                    f"the new model {new.model_version} takes different inputs (dataset spec) "
                    f"than the served {old.model_version}; restart the API to change schemas"))
            # Observers (metrics, prediction log) watch whatever model is served: carry them over.
            new.observers[:] = list(getattr(old, "observers", []))
            request.app.state.predictor = new  # the swap: one atomic assignment
            request.app.state.model_source = source
            worker = getattr(request.app.state, "job_worker", None)
            if worker is not None and hasattr(worker, "predictor"):
                worker.predictor = new  # jobs started later score with the new model
            return ReloadResponse(previous_model_version=old.model_version,
                                  model_version=new.model_version,
                                  changed=new.model_version != old.model_version, source=source)
        finally:
            lock.release()

    return router


def _inputs(spec: Any) -> tuple:
    # What the request schemas were built from when the app started.
    return spec.target, spec.image_size, [f.model_dump() for f in spec.fields]
