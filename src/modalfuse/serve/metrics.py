"""Prometheus metrics and the per-request observability layer (request id, timing, access log).

Each app gets its own CollectorRegistry, so several apps in one process (tests, a reload)
never share or double-register series. Under several worker processes (PROMETHEUS_MULTIPROC_DIR
set, `modalfuse serve --workers N`) prometheus_client keeps every series in that folder and
`/metrics` sums all workers' (serve/workers.py): gauges say how (`livesum` for requests in
flight, the most recent value for the others). The middleware is plain ASGI: it adds a few
microseconds per request, where Starlette's BaseHTTPMiddleware would add far more.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalfuse.inference.predictor import PredictionEvent
from modalfuse.monitor.context import request_id_var
from modalfuse.monitor.performance import (
    PerformanceThresholds,
    latest_window_start,
    performance_summary,
)
from modalfuse.monitor.predlog import FeedbackOutcome, PredictionLog
from modalfuse.serve.logging import request_id_from

access_log = logging.getLogger("modalfuse.access")

def multiprocess_dir() -> str | None:
    """The folder of prometheus_client's multiprocess mode, when this process is a worker."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Across worker processes a gauge shows the value set last (each worker sets the same one).
RECENT: dict[str, Any] = {"multiprocess_mode": "mostrecent"}
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The series the API exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modalfuse_http_requests_total", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("modalfuse_http_request_duration_seconds",
                                 "time from request to the end of the response",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("modalfuse_http_errors_total",
                              "responses with a 4xx or 5xx status", ["route", "status_class"],
                              registry=r)
        self.in_flight = Gauge("modalfuse_http_requests_in_flight", "requests being served",
                               registry=r, multiprocess_mode="livesum")
        self.predictions = Counter("modalfuse_predictions_total", "rows scored, by predicted class",
                                   ["label", "model_version"], registry=r)
        self.prediction_latency = Histogram("modalfuse_predictor_seconds",
                                            "Predictor time per scored call (decode to output)",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.ood_flags = Counter("modalfuse_ood_flags_total", "scored rows flagged out of "
                                 "distribution, by input (image, fields)",
                                 ["input", "model_version"], registry=r)
        self.modalities = Counter("modalfuse_predictions_by_modalities_total", "scored rows by "
                                  "what they were scored from (both, fields, image)",
                                  ["modalities", "model_version"], registry=r)
        self.log_dropped = Counter("modalfuse_prediction_log_dropped_total",
                                   "predictions not logged because the log queue was full",
                                   registry=r)
        self.jobs = Gauge("modalfuse_jobs", "batch jobs by state", ["state"], registry=r, **RECENT)
        # Live performance on labelled traffic (monitor/performance.py): the latest window
        # with feedback of each model version, refreshed on feedback and on reads.
        by_model = ["model_version"]
        self.live_accuracy = Gauge("modalfuse_live_accuracy", "accuracy on the labelled rows of "
                                   "the latest window with feedback", by_model, registry=r, **RECENT)
        self.live_macro_f1 = Gauge("modalfuse_live_macro_f1", "macro-F1 on the labelled rows of "
                                   "the latest window with feedback", by_model, registry=r, **RECENT)
        self.live_ece = Gauge("modalfuse_live_ece", "expected calibration error on the labelled "
                              "rows of the latest window with feedback", by_model, registry=r, **RECENT)
        self.live_labels = Gauge("modalfuse_live_labels", "labelled rows in the latest window "
                                 "with feedback", by_model, registry=r, **RECENT)
        self.labelled_share = Gauge("modalfuse_labelled_share", "share of the latest window's "
                                    "predictions that have feedback", by_model, registry=r, **RECENT)
        self.performance_alert = Gauge("modalfuse_performance_alert", "1 when the latest window "
                                       "with feedback is flagged (MODALFUSE_ALERT_*)", by_model,
                                       registry=r, **RECENT)
        self.feedback = Counter("modalfuse_feedback_total", "feedback rows received, by outcome "
                                "(stored, unchanged, replaced, unknown)",
                                ["model_version", "outcome"], registry=r)

    def observe_prediction(self, event: PredictionEvent) -> None:
        """Record a scored call: its Predictor latency, a count per predicted class, per
        modality case and per OOD flag."""
        self.prediction_latency.observe(event.latency_s)
        for j, n in zip(*np.unique(event.proba.argmax(axis=1), return_counts=True), strict=True):
            self.predictions.labels(event.labels[int(j)], event.model_version).inc(int(n))
        prep, version = event.prepared, event.model_version
        for mode in set(prep.modes):
            self.modalities.labels(mode, version).inc(prep.modes.count(mode))
        for name, flags in (("image", prep.image_flags()), ("fields", prep.field_flagged())):
            n = sum(1 for f in flags if f)
            if n:
                self.ood_flags.labels(name, version).inc(n)

    def observe_feedback(self, outcomes: Sequence[FeedbackOutcome]) -> None:
        """Count feedback rows by model version and outcome (an unknown id has no version)."""
        for o in outcomes:
            self.feedback.labels(o.model_version or "unknown", o.status).inc()

    def observe_performance(self, summary: dict[str, Any]) -> None:
        """Set the live gauges from a `performance_summary`: each model's latest window."""
        for version, m in summary["models"].items():
            w = m["latest"]
            if w is None:
                continue
            self.live_accuracy.labels(version).set(w["accuracy"])
            self.live_macro_f1.labels(version).set(w["macro_f1"])
            self.live_ece.labels(version).set(w["ece"])
            self.live_labels.labels(version).set(w["labelled"])
            self.labelled_share.labels(version).set(w["labelled_share"])
            self.performance_alert.labels(version).set(1 if w["alerts"] else 0)

    def refresh_performance(self, plog: PredictionLog, thresholds: PerformanceThresholds,
                            versions: Iterable[str]) -> None:
        """Recompute the live gauges of `versions` from their latest window with feedback
        only (cheap enough to run after every feedback request)."""
        for version in set(versions):
            since = latest_window_start(plog, thresholds.window_s, version)
            if since is not None:
                self.observe_performance(performance_summary(plog, thresholds, version, since))

    def render(self) -> bytes:
        """The metrics in the Prometheus text format, for the `/metrics` endpoint: this app's,
        or every worker's summed in multiprocess mode."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)

    @staticmethod
    def process_exited() -> None:
        """At a worker's exit: drop its live gauges (requests in flight) from the sums."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())

    content_type = CONTENT_TYPE_LATEST


class ObservabilityMiddleware:
    """Request id in and out, Prometheus series and one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for k, v in scope.get("headers") or []:
            if k == b"x-request-id":
                header = v.decode("latin-1")
                break
        rid = request_id_from(header)
        token = request_id_var.set(rid)
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            m = self.metrics
            m.requests.labels(method, template, str(status)).inc()
            m.latency.labels(method, template).observe(elapsed)
            if status >= 400:
                m.errors.labels(template, f"{status // 100}xx").inc()
            access_log.info("request", extra={
                "method": method, "path": scope.get("path"), "route": template,
                "status": status, "duration_ms": round(elapsed * 1000, 3)})
            request_id_var.reset(token)
