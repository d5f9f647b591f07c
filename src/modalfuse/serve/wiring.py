"""Wires the production layer into an app: metrics and request ids, the prediction log,
async jobs, the shadow and canary releases, the jobs, monitoring and feedback routers, a 422
handler safe for NaN input, the sync of workers, and the lifespan that starts and stops their
threads.

`install` is called once by `create_app`; the worker threads start with the app's lifespan
(and on first use), and stop with it. Metrics and the prediction log observe the model
holder, and the job worker reads it at claim time, so a reload reaches them all.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from modalfuse.config import Settings
from modalfuse.monitor.drift import feature_names
from modalfuse.monitor.predlog import PredictionLog
from modalfuse.serve import canary, shadow
from modalfuse.serve.jobs import JobStore, JobWorker
from modalfuse.serve.metrics import ObservabilityMiddleware, ServiceMetrics
from modalfuse.serve.retention import RetentionSweeper
from modalfuse.serve.routes import feedback as feedback_routes
from modalfuse.serve.routes import jobs as jobs_routes
from modalfuse.serve.routes import monitoring as monitoring_routes
from modalfuse.serve.state import ModelHolder
from modalfuse.serve.workers import CONTROL_FILE, Action, ControlLog, WorkerSync


def _json_safe(v: Any) -> Any:
    """NaN and infinities as strings, lone surrogates escaped: they are not JSON (or not
    UTF-8), and echoing one back in a 422 must not 500."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, str):
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(v, dict):
        return {_json_safe(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but safe to render when the bad input was NaN or infinite."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def install(app: FastAPI, settings: Settings, holder: ModelHolder) -> None:
    """Add metrics, the prediction log, async jobs and their routes to an app serving
    `holder`'s model."""
    metrics = ServiceMetrics()
    app.state.metrics = metrics
    holder.observe(metrics.observe_prediction)
    plog: PredictionLog | None = None
    if settings.log_predictions:
        # A reload keeps the inputs (ModelHolder refuses others), so the columns stay valid.
        plog = PredictionLog(settings.data_dir / "monitoring" / "predictions.db",
                             feature_names=feature_names(holder.current.predictor),
                             on_drop=metrics.log_dropped.inc,
                             max_age_s=settings.prediction_log_max_age,
                             max_bytes=int(settings.prediction_log_max_mb * 1_000_000))
        holder.observe(plog.observe)
    app.state.prediction_log = plog
    # Releases beside the champion: a shadow challenger and a canary share (off by default).
    shadow.install(app, settings, holder, metrics.registry)
    canary.install(app, settings, holder)
    store = JobStore(settings.data_dir / "jobs").open()
    worker = JobWorker(store, holder, lease_s=settings.job_lease_s,
                       policy=settings.job_model_policy)
    app.state.job_store, app.state.job_worker = store, worker

    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.include_router(jobs_routes.router)
    app.include_router(monitoring_routes.router)
    app.include_router(feedback_routes.router)  # ground truth for the prediction log
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    sync = worker_sync(app, settings, holder) if settings.workers > 1 else None
    app.state.worker_sync = sync

    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        worker.ensure_started()
        # Retention: expired jobs and their folders are deleted now and every sweep interval.
        sweeper = RetentionSweeper(store, settings.job_ttl, settings.retention_sweep_every)
        sweeper.start()
        if plog is not None:
            plog.start()
        if sync is not None:
            sync.start()
        try:
            async with previous(a) as state:
                yield state
        finally:
            if sync is not None:
                sync.stop()
            sweeper.stop()
            worker.stop()
            if plog is not None:
                plog.stop()
            metrics.process_exited()

    app.router.lifespan_context = lifespan


def worker_sync(app: FastAPI, settings: Settings, holder: ModelHolder) -> WorkerSync:
    """This worker's follower of the server's control log: the admin actions another worker
    got are applied here by the same calls the admin routes make."""
    def apply(action: Action) -> str:
        a = action.args
        bundle = Path(a["bundle"]) if a.get("bundle") else None
        if action.name == "reload":
            holder.reload(a.get("model_uri"), bundle)
        elif action.name == "shadow_start":
            app.state.shadow.start(a.get("model_uri"), bundle)
        elif action.name == "shadow_stop":
            app.state.shadow.stop()
        elif action.name == "canary_start":
            app.state.canary.start(a["share"], a.get("model_uri"), bundle)
        elif action.name == "canary_stop":
            app.state.canary.stop()
        else:
            raise ValueError(f"unknown admin action {action.name!r}")
        return holder.current.version

    control = ControlLog(settings.data_dir / "serving" / CONTROL_FILE)
    return WorkerSync(control, settings.workers, apply, lambda: holder.current.version)
