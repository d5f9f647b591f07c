"""Shadow release: a challenger scores every request the champion scores, off the response path.

An observer on the champion (registered once on the `ModelHolder`) puts each scored row (its
record, image bytes, prediction id and the champion's label) on a bounded queue and returns;
when the queue is full the row is dropped and counted (`modalfuse_shadow_dropped_total`), so a
request never waits for the shadow. A scorer process of its own (`serve/shadow_worker.py`, at a
lower CPU priority, so it holds neither the API's GIL nor its CPU) scores queued rows in
batches with the challenger's own Predictor (its own preprocessing) and writes both answers to
the `shadow` table of the prediction-log file (`monitor/shadowlog.py`). Only the champion's rows are
shadowed: a canary's rows, and rows a model scored after a reload swapped it out, are not.

A shadow starts from the settings at boot (MODALFUSE_SHADOW_MODEL_URI or _BUNDLE) or with
`POST /admin/shadow`, and ends with `DELETE /admin/shadow`, with the app, or on a reload that
makes the challenger the champion.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge

from modalfuse.config import Settings
from modalfuse.inference.predictor import PredictionEvent
from modalfuse.monitor.shadowlog import ShadowLog, prediction_db
from modalfuse.serve.shadow_worker import ScorerSpec, ShadowCounters, ShadowWork, run_scorer
from modalfuse.serve.state import ModelHolder, Reload, ServedModel

log = logging.getLogger("modalfuse.serve")



class ShadowMetrics:
    """The shadow's Prometheus series, registered once per app on its metrics registry."""

    def __init__(self, registry: CollectorRegistry):
        self.scored = Counter("modalfuse_shadow_scored_total", "rows the shadow challenger scored",
                              ["challenger_version"], registry=registry)
        self.dropped = Counter("modalfuse_shadow_dropped_total",
                               "rows not shadowed because the shadow queue was full",
                               registry=registry)
        self.agreement = Gauge("modalfuse_shadow_agreement",
                               "share of the running shadow's rows where the challenger's label "
                               "is the champion's", registry=registry,
                               multiprocess_mode="mostrecent")


class Shadow:
    """One running shadow release: the challenger, its bounded queue and its scorer process
    (`serve/shadow_worker.py`)."""

    def __init__(self, challenger: ServedModel, shadow_log: ShadowLog, metrics: ShadowMetrics,
                 queue_size: int):
        self.challenger = challenger
        self.log, self.metrics, self.queue_size = shadow_log, metrics, queue_size
        self.started_at = datetime.now(UTC)
        self.dropped = self.queued = 0
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._queue: Any = ctx.Queue(queue_size)
        self.counters = ShadowCounters(ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0),
                                       ctx.Value("q", 0), ctx.Event())
        self._stop = ctx.Event()
        predictor = challenger.predictor
        spec = ScorerSpec(predictor.bundle.path, predictor.max_image_bytes,
                          predictor.max_image_pixels, shadow_log.path, shadow_log.max_age_s)
        self._process = ctx.Process(target=run_scorer, name="modalfuse-shadow", daemon=True,
                                    args=(spec, self._queue, self.counters, self._stop))
        self._drops: dict[str, int] = {}  # champion version -> rows dropped, not yet logged
        self._lock = threading.Lock()
        self._synced = 0  # scored rows already added to the Prometheus counter
        self._sync_stop = threading.Event()
        self._sync = threading.Thread(target=self._sync_loop, name="modalfuse-shadow-sync",
                                      daemon=True)

    @property
    def pid(self) -> int | None:
        """The scorer process's id (None before it starts)."""
        return self._process.pid

    @property
    def scored(self) -> int:
        """Rows the challenger scored and logged."""
        return int(self.counters.scored.value)

    @property
    def agree(self) -> int:
        """Scored rows where the challenger's label is the champion's."""
        return int(self.counters.agree.value)

    @property
    def failed(self) -> int:
        """Rows the challenger could not score."""
        return int(self.counters.failed.value)

    def start(self) -> Shadow:
        """Start the scorer process and the metrics sync; returns self."""
        self._process.start()
        self._sync.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the scorer has loaded the challenger; whether it did in time."""
        return bool(self.counters.ready.wait(timeout))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the scorer after its current batch (queued rows are left unscored)."""
        self._stop.set()
        if self._process.is_alive():
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout)
        self._sync_stop.set()
        if self._sync.is_alive() and threading.current_thread() is not self._sync:
            self._sync.join(timeout)
        self.sync_metrics()
        self._log_drops()
        self._queue.cancel_join_thread()  # rows left unscored are dropped with the process
        self._queue.close()

    def observe(self, event: PredictionEvent) -> None:
        """Queue the event's rows for the challenger; a full queue drops and counts them."""
        ts = time.time()
        ids = event.prediction_ids
        top = event.proba.argmax(axis=1)
        lost = put = 0
        for k, row in enumerate(event.prepared.valid):
            work = ShadowWork(ts, dict(event.records[row]),
                              event.images[row] if row < len(event.images) else None,
                              None if ids is None else str(ids[row]), event.model_version,
                              event.labels[int(top[k])])
            try:
                self._queue.put_nowait(work)
                put += 1
            except (queue.Full, ValueError, OSError):  # full, or closed by a concurrent stop
                lost += 1
        with self._lock:
            self.queued += put
            if lost:
                self.dropped += lost
                self._drops[event.model_version] = self._drops.get(event.model_version, 0) + lost
        if lost:
            self.metrics.dropped.inc(lost)

    @property
    def pending(self) -> int:
        """Rows queued and not yet finished by the scorer."""
        return self.queued - int(self.counters.done.value)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued row is scored and logged; whether it was in time (tests)."""
        end = time.monotonic() + timeout
        while self.pending and time.monotonic() < end and self._process.is_alive():
            time.sleep(0.01)
        self.sync_metrics()
        self._log_drops()
        return not self.pending

    def describe(self) -> dict[str, Any]:
        """The shadow as `/admin/releases` reports it."""
        scored = self.scored
        try:
            waiting = self._queue.qsize()
        except (NotImplementedError, OSError):  # macOS has no sem_getvalue; a closed queue
            waiting = None
        return {"model_version": self.challenger.version, "source": dict(self.challenger.source),
                "started_at": self.started_at.isoformat(), "queue_size": self.queue_size,
                "queued": waiting, "pending": self.pending,
                "scored": scored, "agree": self.agree,
                "agreement": self.agree / scored if scored else None,
                "dropped": self.dropped, "failed": self.failed,
                "scorer_pid": self.pid, "scorer_alive": self._process.is_alive()}

    def sync_metrics(self) -> None:
        """Bring the Prometheus series up to the scorer's counters."""
        scored = self.scored
        with self._lock:
            delta, self._synced = scored - self._synced, scored
        if delta > 0:
            self.metrics.scored.labels(self.challenger.version).inc(delta)
        if scored:
            self.metrics.agreement.set(self.agree / scored)

    def _sync_loop(self) -> None:
        while not self._sync_stop.wait(0.5):
            self.sync_metrics()
            self._log_drops()

    def _log_drops(self) -> None:
        with self._lock:
            drops, self._drops = self._drops, {}
        for champion_version, n in drops.items():
            try:
                self.log.record_drops(champion_version, self.challenger.version, n)
            except Exception:
                log.exception("cannot log %d dropped shadow rows", n)


class ShadowRelease:
    """The app's shadow slot: at most one `Shadow` at a time, fed by one observer on the
    champion that the holder keeps across reloads."""

    def __init__(self, holder: ModelHolder, shadow_log: ShadowLog, metrics: ShadowMetrics,
                 queue_size: int):
        self.holder, self.log, self.metrics, self.queue_size = (holder, shadow_log, metrics,
                                                                queue_size)
        self._shadow: Shadow | None = None
        self._lock = threading.Lock()
        self.ended: dict[str, Any] | None = None  # the last shadow that ended, and why
        holder.observe(self.observe)
        holder.on_reload(self._after_reload)

    @property
    def current(self) -> Shadow | None:
        """The running shadow, or None."""
        return self._shadow

    def observe(self, event: PredictionEvent) -> None:
        """Prediction observer: hand the champion's rows to the running shadow, if any."""
        shadow = self._shadow
        if shadow is None or event.model_version != self.holder.current.version:
            return  # no shadow, or a canary's (or a swapped-out model's) rows
        shadow.observe(event)

    def start(self, model_uri: str | None = None, bundle: Path | None = None) -> Shadow:
        """Load the challenger (same inputs as the champion, or `IncompatibleModel`) and shadow
        every champion request with it; a running shadow is replaced."""
        challenger = self.holder.load_challenger(model_uri, bundle, observed=False)
        self.log.open()
        shadow = Shadow(challenger, self.log, self.metrics, self.queue_size).start()
        with self._lock:
            old, self._shadow = self._shadow, shadow
        if old is not None:
            self._ended(old, f"replaced by {challenger.version}")
        log.info("shadowing the champion with %s", challenger.version)
        return shadow

    def stop(self, reason: str = "stopped by DELETE /admin/shadow") -> Shadow | None:
        """End the running shadow; returns it, or None when none ran."""
        with self._lock:
            old, self._shadow = self._shadow, None
        if old is not None:
            self._ended(old, reason)
        return old

    def _ended(self, shadow: Shadow, reason: str) -> None:
        shadow.stop()
        self.ended = {**shadow.describe(), "ended_at": datetime.now(UTC).isoformat(),
                      "reason": reason}
        log.info("shadow %s ended: %s", shadow.challenger.version, reason)

    def _after_reload(self, done: Reload) -> None:
        shadow = self._shadow
        if shadow is not None and shadow.challenger.version == done.current.version:
            self.stop(f"promoted: {done.current.version} is the champion")


def install(app: FastAPI, settings: Settings, holder: ModelHolder,
            registry: CollectorRegistry) -> ShadowRelease:
    """Give the app its shadow slot (`app.state.shadow`). A challenger the settings name is
    checked now (a bad one fails the start-up) and its scorer process starts with the app's
    lifespan, so an app that fails to build leaves no process behind; it stops with the app."""
    release = ShadowRelease(holder, ShadowLog(prediction_db(settings.data_dir),
                                              max_age_s=settings.prediction_log_max_age),
                            ShadowMetrics(registry), settings.shadow_queue_size)
    app.state.shadow = release
    named = settings.shadow_model_uri or settings.shadow_bundle is not None
    if named:
        holder.load_challenger(settings.shadow_model_uri, settings.shadow_bundle, observed=False)

    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        if named and release.current is None:
            release.start(settings.shadow_model_uri, settings.shadow_bundle)
        try:
            async with previous(a) as state:
                yield state
        finally:
            release.stop("the server stopped")

    app.router.lifespan_context = lifespan
    return release
