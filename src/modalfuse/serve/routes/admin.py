"""Admin routes (API key required): swap the served model without dropping requests, and run
shadow and canary releases of a challenger beside it.

`/admin/reload` is `ModelHolder.reload`: the new model is loaded first (in the thread pool,
off the event loop), then swapped in whole. A request in flight finishes on the model it
started with; every consumer (routes, UI, job worker, metrics, prediction log) reads the
holder, so nothing else is rewired. A reload that makes the canary's (or the shadow's) model
the champion ends that release.

`/admin/shadow` starts (POST) and ends (DELETE) a shadow release (`serve/shadow.py`);
`/admin/canary` does the same for a canary (`serve/canary.py`); `/admin/releases` says what
runs. A challenger must take the champion's inputs: one that does not is refused with 409.

With several worker processes (`modalfuse serve --workers N`) each of these actions is
applied by the worker that got the request, then by every other (serve/workers.py); the
answer's `workers` lists each live worker's model and any error, once all have applied it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, Field

from modalfuse.errors import InvalidInput
from modalfuse.serve.deps import CanaryDep, ModelHolderDep, ShadowDep
from modalfuse.serve.security import AuthDep
from modalfuse.serve.state import RegistryUnavailable, ReloadError

router = APIRouter(prefix="/admin", tags=["admin"])
T = TypeVar("T")


# The request and response models have no docstrings: those would change the OpenAPI schema.
class ReloadRequest(BaseModel):
    # What to reload: a model URI or a bundle folder; neither is the server's own choice.
    model_uri: str | None = Field(default=None, description="models:/NAME@ALIAS or "
                                  "models:/NAME/VERSION; default: what the server serves "
                                  "(its alias re-resolved; a server that fell back to the latest "
                                  "bundle chooses again: the champion if there is one now)")
    bundle: str | None = Field(default=None, description="a bundle folder on the server")


WORKERS_FIELD = Field(default=None, description="with several worker processes: each live "
                      "worker's pid, the last action it applied, the model it serves and its "
                      "error if it could not apply this one; null with one process")


class ReloadResponse(BaseModel):
    # The model served before the reload and the one served now, with its source.
    previous_model_version: str
    model_version: str
    changed: bool
    source: dict[str, Any]
    workers: list[dict[str, Any]] | None = WORKERS_FIELD


def everywhere(request: Request, name: str, args: dict[str, Any], local: Callable[[], T]
               ) -> tuple[T, list[dict[str, Any]] | None]:
    """Run an admin action on this worker and, with several workers, on every other one."""
    sync = getattr(request.app.state, "worker_sync", None)
    if sync is None:
        return local(), None
    return sync.perform(name, args, local)


@router.post("/reload", response_model=ReloadResponse,
             summary="Reload the model (re-resolving its registry alias) and swap it in")
def reload(_: AuthDep, holder: ModelHolderDep, request: Request,
           body: ReloadRequest | None = None) -> ReloadResponse:
    # 409 (503 for an unreachable registry) keeps the old model. No docstring: it would
    # become the route's OpenAPI description.
    body = body or ReloadRequest()
    try:
        done, workers = everywhere(
            request, "reload", body.model_dump(),
            lambda: holder.reload(body.model_uri, Path(body.bundle) if body.bundle else None))
    except RegistryUnavailable as e:
        raise HTTPException(503, detail=str(e)) from None
    except ReloadError as e:
        raise HTTPException(409, detail=str(e)) from None
    return ReloadResponse(previous_model_version=done.previous.version,
                          model_version=done.current.version, changed=done.changed,
                          source=done.current.source, workers=workers)


def release_error(e: Exception) -> HTTPException:
    """The answer to a release that could not start: 503 for an unreachable registry, else
    409 (a model that cannot be served beside the champion, no canary to re-share)."""
    if isinstance(e, RegistryUnavailable):
        return HTTPException(503, detail=str(e))
    return HTTPException(409, detail=str(e))


class ShadowRequest(BaseModel):
    # The challenger to shadow the champion with; neither field: what a reload would load.
    model_uri: str | None = Field(default=None, description="models:/NAME@ALIAS or "
                                  "models:/NAME/VERSION; default: the server's own choice "
                                  "re-resolved (after `modalfuse promote`, the new champion)")
    bundle: str | None = Field(default=None, description="a bundle folder on the server")


SHADOW_EXAMPLES = {
    "server_choice": {"summary": "shadow with the server's own model choice, re-resolved "
                                 "(e.g. the champion alias that `modalfuse promote` moved)",
                      "value": {}},
}
CANARY_EXAMPLES = {
    "start": {"summary": "answer 10 % of clients with the server's own model choice, re-resolved "
                         "(or name a model_uri or bundle)", "value": {"share": 0.1}},
}


class CanaryRequest(BaseModel):
    # The share of clients the canary answers and, to start one, its model.
    share: float = Field(ge=0, le=1, description="share of clients (sticky by X-Client-Key, "
                         "else the API key, else the IP) answered by the canary; 0 ends it")
    model_uri: str | None = Field(default=None, description="models:/NAME@ALIAS or "
                                  "models:/NAME/VERSION; none: change the running canary's "
                                  "share, or start one of the server's own choice re-resolved")
    bundle: str | None = Field(default=None, description="a bundle folder on the server")


class ReleasesResponse(BaseModel):
    # What is served: the champion, and the shadow and canary releases beside it (None: none).
    champion: dict[str, Any]
    shadow: dict[str, Any] | None
    canary: dict[str, Any] | None
    ended: dict[str, Any] = Field(description="the last shadow and canary that ended, and why")
    workers: list[dict[str, Any]] | None = WORKERS_FIELD


def releases_state(holder: ModelHolderDep, shadow: ShadowDep, canary: CanaryDep,
                   workers: list[dict[str, Any]] | None = None) -> ReleasesResponse:
    """The champion, the running shadow and canary, and the last of each that ended."""
    champion = holder.current
    running_shadow, running_canary = shadow.current, canary.current
    return ReleasesResponse(
        champion={"model_version": champion.version, "source": dict(champion.source),
                  "loaded_at": champion.loaded_at.isoformat()},
        shadow=running_shadow.describe() if running_shadow else None,
        canary=running_canary.describe() if running_canary else None,
        ended={"shadow": shadow.ended, "canary": canary.ended}, workers=workers)


@router.get("/releases", response_model=ReleasesResponse,
            summary="The champion and the shadow and canary releases beside it")
def releases(_: AuthDep, holder: ModelHolderDep, shadow: ShadowDep,
             canary: CanaryDep) -> ReleasesResponse:
    return releases_state(holder, shadow, canary)


@router.post("/shadow", response_model=ReleasesResponse,
             summary="Shadow every champion request with a challenger (off the response path)")
def start_shadow(_: AuthDep, holder: ModelHolderDep, shadow: ShadowDep, canary: CanaryDep,
                 request: Request,
                 body: Annotated[ShadowRequest, Body(openapi_examples=SHADOW_EXAMPLES)]
                 ) -> ReleasesResponse:
    try:
        _started, workers = everywhere(request, "shadow_start", body.model_dump(), lambda: shadow.start(
            body.model_uri, Path(body.bundle) if body.bundle else None))
    except (ReloadError, InvalidInput) as e:
        raise release_error(e) from None
    return releases_state(holder, shadow, canary, workers)


@router.delete("/shadow", response_model=ReleasesResponse, summary="End the shadow release")
def stop_shadow(_: AuthDep, holder: ModelHolderDep, shadow: ShadowDep,
                canary: CanaryDep, request: Request) -> ReleasesResponse:
    if shadow.current is None:
        raise HTTPException(404, detail="no shadow release is running")
    _ended, workers = everywhere(request, "shadow_stop", {}, lambda: shadow.stop())
    return releases_state(holder, shadow, canary, workers)


@router.post("/canary", response_model=ReleasesResponse,
             summary="Answer a share of clients (sticky) with a challenger, or change the share")
def start_canary(_: AuthDep, holder: ModelHolderDep, shadow: ShadowDep, canary: CanaryDep,
                 request: Request,
                 body: Annotated[CanaryRequest, Body(openapi_examples=CANARY_EXAMPLES)]
                 ) -> ReleasesResponse:
    try:
        _started, workers = everywhere(request, "canary_start", body.model_dump(), lambda: canary.start(
            body.share, body.model_uri, Path(body.bundle) if body.bundle else None))
    except (ReloadError, InvalidInput) as e:
        raise release_error(e) from None
    return releases_state(holder, shadow, canary, workers)


@router.delete("/canary", response_model=ReleasesResponse,
               summary="End the canary release (a rollback: its clients go back to the champion)")
def stop_canary(_: AuthDep, holder: ModelHolderDep, shadow: ShadowDep,
                canary: CanaryDep, request: Request) -> ReleasesResponse:
    if canary.current is None:
        raise HTTPException(404, detail="no canary release is running")
    _ended, workers = everywhere(request, "canary_stop", {}, lambda: canary.stop())
    return releases_state(holder, shadow, canary, workers)
