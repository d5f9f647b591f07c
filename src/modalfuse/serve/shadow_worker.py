"""The shadow's scorer, in a process of its own: it loads the challenger's bundle, scores the
rows the API queues for it and writes both answers to the shadow table.

A process, not a thread: decoding and preprocessing a row hold the GIL, so a scoring thread
inside the API slows every request it shares the interpreter with. In its own process, at a
lower CPU priority, the challenger uses a core the API leaves idle and yields the CPU to the
API when both want it. Only small things cross: a row's record and image bytes in, counters
out. This module imports nothing of the web app, so the child starts light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.inference.predictor import PredictionInputError, Predictor
from modalfuse.monitor.shadowlog import ShadowLog, ShadowRow

log = logging.getLogger("modalfuse.serve")

# Rows scored in one challenger call: large enough to amortise a call, small enough to keep
# the shadow close behind the traffic.
SHADOW_BATCH_ROWS = 64
# How much lower the scorer's CPU priority is than the API's (os.nice).
SHADOW_NICENESS = 10


@dataclass(frozen=True)
class ShadowWork:
    """One champion row waiting for the challenger: its inputs and the champion's answer."""

    ts: float
    record: dict[str, Any]
    image: bytes | None
    prediction_id: str | None
    champion_version: str
    champion_label: str


@dataclass
class ShadowCounters:
    """Counters the scorer updates and the API reads (process-shared integers)."""

    done: Synchronized  # rows taken off the queue and finished, scored or not
    scored: Synchronized
    agree: Synchronized
    failed: Synchronized
    ready: Any = field(default=None)  # an Event set once the challenger is loaded


@dataclass(frozen=True)
class ScorerSpec:
    """What the scorer process needs to rebuild the challenger and its log."""

    bundle: Path
    max_image_bytes: int
    max_image_pixels: int
    log_path: Path
    max_age_s: float | None


def run_scorer(spec: ScorerSpec, work: Any, counters: ShadowCounters, stop: Any) -> None:
    """The scorer process: load the challenger, then score queued rows in batches until `stop`."""
    with contextlib.suppress(OSError):  # not allowed here: run at the API's priority
        os.nice(SHADOW_NICENESS)
    predictor = Predictor.from_path(spec.bundle, max_image_bytes=spec.max_image_bytes,
                                    max_image_pixels=spec.max_image_pixels)
    shadow_log = ShadowLog(spec.log_path, max_age_s=spec.max_age_s)
    counters.ready.set()
    while not stop.is_set():
        try:
            batch = [work.get(timeout=0.25)]
        except queue.Empty:
            continue
        while len(batch) < SHADOW_BATCH_ROWS:
            try:
                batch.append(work.get_nowait())
            except queue.Empty:
                break
        try:
            score_batch(predictor, shadow_log, batch, counters)
        except Exception:  # the shadow must never stop over one batch; say so, go on
            with counters.failed.get_lock():
                counters.failed.value += len(batch)
            log.exception("the shadow challenger %s failed on %d rows", predictor.model_version,
                          len(batch))
        finally:
            with counters.done.get_lock():
                counters.done.value += len(batch)


def score_batch(predictor: Predictor, shadow_log: ShadowLog, batch: list[ShadowWork],
                counters: ShadowCounters) -> None:
    """Score one batch with the challenger and log both answers."""
    proba = challenger_proba(predictor, batch, counters)
    labels, version = predictor.labels, predictor.model_version
    rows = [ShadowRow(w.ts, w.prediction_id, w.champion_version, version, w.champion_label,
                      labels[int(np.argmax(p))], p.astype(np.float32).tobytes())
            for w, p in zip(batch, proba, strict=True) if p is not None]
    if not rows:
        return
    shadow_log.write(rows, {version: labels})
    with counters.scored.get_lock():
        counters.scored.value += len(rows)
    with counters.agree.get_lock():
        counters.agree.value += sum(r.agree for r in rows)


def challenger_proba(predictor: Predictor, batch: list[ShadowWork],
                     counters: ShadowCounters) -> list[np.ndarray | None]:
    """The challenger's probabilities per row; a row it refuses is left out alone."""
    # The challenger takes the champion's inputs (checked at start), so a row the champion
    # scored is one it scores too; one that fails anyway is counted and skipped.
    try:
        return list(predictor.predict_proba([w.record for w in batch], [w.image for w in batch]))
    except PredictionInputError:
        out: list[np.ndarray | None] = []
        for w in batch:
            try:
                out.append(predictor.predict_proba([w.record], [w.image])[0])
            except PredictionInputError:
                out.append(None)
                with counters.failed.get_lock():
                    counters.failed.value += 1
        return out
