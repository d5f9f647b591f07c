"""Admin routes (API key required): swap the served model without dropping requests.

`/admin/reload` is `ModelHolder.reload`: the new model is loaded first (in the thread pool,
off the event loop), then swapped in whole. A request in flight finishes on the model it
started with; every consumer (routes, UI, job worker, metrics, prediction log) reads the
holder, so nothing else is rewired.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from modalfuse.serve.deps import ModelHolderDep
from modalfuse.serve.security import AuthDep
from modalfuse.serve.state import RegistryUnavailable, ReloadError

router = APIRouter(prefix="/admin", tags=["admin"])


# The request and response models have no docstrings: those would change the OpenAPI schema.
class ReloadRequest(BaseModel):
    # What to reload: a model URI or a bundle folder; neither is the server's own choice.
    model_uri: str | None = Field(default=None, description="models:/NAME@ALIAS or "
                                  "models:/NAME/VERSION; default: what the server serves "
                                  "(its alias re-resolved; a server that fell back to the latest "
                                  "bundle chooses again: the champion if there is one now)")
    bundle: str | None = Field(default=None, description="a bundle folder on the server")


class ReloadResponse(BaseModel):
    # The model served before the reload and the one served now, with its source.
    previous_model_version: str
    model_version: str
    changed: bool
    source: dict[str, Any]


@router.post("/reload", response_model=ReloadResponse,
             summary="Reload the model (re-resolving its registry alias) and swap it in")
def reload(_: AuthDep, holder: ModelHolderDep,
           body: ReloadRequest | None = None) -> ReloadResponse:
    # 409 (503 for an unreachable registry) keeps the old model. No docstring: it would
    # become the route's OpenAPI description.
    body = body or ReloadRequest()
    try:
        done = holder.reload(body.model_uri, Path(body.bundle) if body.bundle else None)
    except RegistryUnavailable as e:
        raise HTTPException(503, detail=str(e)) from None
    except ReloadError as e:
        raise HTTPException(409, detail=str(e)) from None
    return ReloadResponse(previous_model_version=done.previous.version,
                          model_version=done.current.version, changed=done.changed,
                          source=done.current.source)
