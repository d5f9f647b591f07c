"""Monitoring routes: drift/skew and live performance of logged predictions, and /metrics."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from modalfuse.monitor.drift import NoReferenceError, drift_summary, load_or_build_reference
from modalfuse.monitor.performance import PerformanceThresholds, performance_summary
from modalfuse.serve.deps import ChampionDep, SettingsDep
from modalfuse.serve.security import AuthDep

router = APIRouter(tags=["ops"])


@router.get("/v1/monitoring/drift", summary="Data drift, prediction drift and feature skew of "
            "the logged predictions against the training reference")
def drift(request: Request, _: AuthDep, served: ChampionDep, settings: SettingsDep,
          hours: Annotated[float | None, Query(gt=0, le=24 * 365,
                                               description="only the last N hours")] = None,
          limit: Annotated[int, Query(ge=1, le=1_000_000)] = 50_000) -> dict[str, Any]:
    plog = getattr(request.app.state, "prediction_log", None)
    if plog is None:
        raise HTTPException(409, detail="prediction logging is off (MODALFUSE_LOG_PREDICTIONS)")
    predictor = served.predictor
    try:
        reference = load_or_build_reference(predictor, settings.data_dir / "monitoring",
                                            settings.dataset_dir(predictor.spec.name))
    except NoReferenceError as e:
        raise HTTPException(409, detail=str(e)) from None
    since = time.time() - hours * 3600 if hours else None
    logged = plog.read(model_version=predictor.model_version, since=since, limit=limit)
    return drift_summary(predictor, reference, logged)


@router.get("/v1/monitoring/performance", summary="Live performance on labelled traffic: "
            "accuracy, macro-F1, ECE and per-class recall per window and model version, and "
            "the windows that are flagged")
def performance(request: Request, _: AuthDep, settings: SettingsDep,
                hours: Annotated[float | None, Query(gt=0, le=24 * 365, description="only "
                                                     "predictions of the last N hours")] = None,
                model_version: Annotated[str | None, Query(max_length=200, description="only "
                                                           "this model version")] = None,
                ) -> dict[str, Any]:
    """Windows of MODALFUSE_PERF_WINDOW by prediction time; thresholds MODALFUSE_ALERT_*."""
    plog = getattr(request.app.state, "prediction_log", None)
    if plog is None:
        raise HTTPException(409, detail="prediction logging is off (MODALFUSE_LOG_PREDICTIONS)")
    since = time.time() - hours * 3600 if hours else None
    summary = performance_summary(plog, PerformanceThresholds.from_settings(settings),
                                  model_version, since)
    if since is None and model_version is None:  # the gauges show the whole log, never a slice
        request.app.state.metrics.observe_performance(summary)
    return summary


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    store = getattr(request.app.state, "job_store", None)
    if store is not None:
        for state, n in store.counts().items():
            m.jobs.labels(state).set(n)
    return Response(m.render(), media_type=m.content_type)
