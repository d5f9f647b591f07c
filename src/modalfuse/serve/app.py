"""The FastAPI application: built from one bundle, thin routes, never a 500 for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalfuse import __version__
from modalfuse.config import Settings, installed
from modalfuse.errors import InvalidInput
from modalfuse.features.image import ImageError
from modalfuse.inference.predictor import PredictionInputError, Predictor
from modalfuse.serve import ratelimit, wiring
from modalfuse.serve.docs import install_docs
from modalfuse.serve.error_middleware import ServerErrors
from modalfuse.serve.routes import admin as admin_routes
from modalfuse.serve.routes import card as card_routes
from modalfuse.serve.routes import explain as explain_routes
from modalfuse.serve.routes import model as model_routes
from modalfuse.serve.routes import predict as predict_routes
from modalfuse.serve.schemas import record_model
from modalfuse.serve.state import ModelHolder, ServedModel
from modalfuse.spec import DatasetSpec
from modalfuse.tracking.source import describe_source, load_served_predictor

log = logging.getLogger("modalfuse.serve")


class BodyLimit:
    """Refuse request bodies over the limit before reading them (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and b"transfer-encoding" not in headers:
            if int(length) > self.max_bytes:
                resp = JSONResponse({"detail": f"request body is {int(length)} bytes; the limit "
                                               f"is {self.max_bytes}"}, status_code=413)
                await resp(scope, receive, send)
                return
            # The server reads no more than Content-Length (and no body is chunked as well):
            # nothing to count on the way.
            await self.app(scope, receive, send)
            return
        received, responded, started = 0, False, False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if responded:
                return  # the 413 is already out; whatever the app answers after it is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def limited() -> Message:
            nonlocal received, responded
            if responded:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if started:
                    raise BodyTooLarge
                # FastAPI turns any error raised while it reads a body into a 400, so the 413
                # is sent from here and the app is told the client has gone.
                resp = JSONResponse({"detail": f"request body exceeds {self.max_bytes} bytes"},
                                    status_code=413)
                await resp(scope, receive, send)
                responded = True
                return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, limited, guarded_send)
        except BodyTooLarge:
            resp = JSONResponse({"detail": f"request body exceeds {self.max_bytes} bytes"},
                                status_code=413)
            await resp(scope, receive, send)


class BodyTooLarge(InvalidInput):
    """Raised inside `BodyLimit` when a body passes the limit after the answer has started."""


def api_description(settings: Settings, spec: DatasetSpec) -> str:
    """The OpenAPI description: what is predicted, and every limit a client can hit."""
    return (
        f"Predicts **{spec.target}** of a `{spec.name}` record from its "
        "table fields and its image. Every response carries the `model_version` that "
        "made it. Limits: image "
        f"{settings.max_image_bytes} bytes and {settings.max_image_pixels} pixels; batch "
        f"{settings.max_batch_rows} rows and {settings.max_request_pixels} decoded pixels "
        f"in all; body {settings.max_body_bytes} bytes; per client "
        f"{settings.rate_limit_per_s:g} requests/s (burst {settings.rate_limit_burst}) and "
        f"{settings.max_concurrent_per_client} in flight (429 with Retry-After beyond; 0 is "
        "no limit). JSON values must have their field's type (no string-to-number or "
        "string-to-bool conversion); base64 may be line-wrapped (RFC 2045)."
    )


def mount_ui_if_installed(app: FastAPI) -> bool:
    """Mount the Gradio UI at /ui when gradio is installed (the `ui` extra and image); the
    lean `serve` install answers the API alone and says so once at start."""
    if not installed("gradio"):
        log.info("no UI at /ui: gradio is not installed (install modalfuse[ui])")
        return False
    from modalfuse.ui.app import mount_ui  # gradio is heavy: imported when an app is built

    mount_ui(app)
    return True


def create_app(settings: Settings | None = None, predictor: Predictor | None = None,
               source: dict | None = None) -> FastAPI:
    """The API around one Predictor: given, or loaded as the settings say (`source` says
    where a given one came from, for `/v1/model` and the start-up line)."""
    settings = settings or Settings()
    if predictor is None:
        # MODALFUSE_MODEL_URI (models:/NAME@champion) or MODALFUSE_BUNDLE; see tracking/source.py
        predictor, source = load_served_predictor(settings)
    elif source is None:  # built around a Predictor the caller already holds
        source = {"source": "bundle", "uri": None, "bundle": str(predictor.bundle.path),
                  "chosen_by": "the caller", "model_version": predictor.model_version}
    holder = ModelHolder(settings, ServedModel.of(predictor, source))
    log.info("serving %s", describe_source(holder.current.source))
    app = FastAPI(
        title="modalfuse API",
        version=__version__,
        docs_url=None,  # /docs and /redoc come from install_docs: no CDN
        redoc_url=None,
        description=api_description(settings, predictor.spec),
    )
    install_docs(app, predictor.spec)
    app.state.settings = settings
    app.state.model_holder = holder  # the one place the served model lives

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", "image"], "type": "image_error",
                                         "msg": str(exc)}]}, status_code=422)

    @app.exception_handler(PredictionInputError)
    async def _input_error(request: Request, exc: PredictionInputError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", row, k], "type": "value_error", "msg": v}
                                        for row, errs in exc.errors.items()
                                        for k, v in errs.items()]}, status_code=422)

    # The request schemas come from the model served at start; a reload keeps its inputs.
    example = predictor.bundle.meta.get("example")
    app.include_router(model_routes.router)
    app.include_router(card_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(predict_routes.build_router(record_model(predictor.spec), example,
                                                   predictor.modalities))
    app.include_router(explain_routes.build_router(record_model(predictor.spec), example,
                                                   predictor.labels))
    mount_ui_if_installed(app)
    # Innermost: a server bug becomes a generic JSON 500 that the outer layers (request id,
    # metrics, access log) still see.
    app.add_middleware(ServerErrors)
    ratelimit.install(app, settings)  # per-client 429s, the pixel budget's 413
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # After BodyLimit, so request ids and metrics wrap every answer (413s too).
    wiring.install(app, settings, holder)
    return app
