"""Canary release: a set share of clients, sticky by client key, is answered by a challenger.

A client's key (the `X-Client-Key` header, else its `X-API-Key`, else its IP address) is
hashed with sha256 into [0, 1); a client whose point falls below the share is answered by the
canary model, every time, and raising the share only adds clients. `deps.get_served_model`
asks `CanaryRelease.model_for`, so every route that takes `ServedModelDep` answers with the
canary's `ServedModel` and its `model_version`. The canary's Predictor notifies the holder's
observers, so metrics and the prediction log see its rows, under its own version.

A canary ends on `DELETE /admin/canary` (a rollback), on a share of 0, and on an
`/admin/reload` that makes its model the champion (a promotion).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from modalfuse.config import Settings
from modalfuse.errors import InvalidInput
from modalfuse.serve.state import ModelHolder, Reload, ServedModel

log = logging.getLogger("modalfuse.serve")

CLIENT_KEY_HEADER = "x-client-key"


def client_point(key: str) -> float:
    """A client key's stable point in [0, 1): the first 8 bytes of its sha256."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def client_key(request: Request) -> str:
    """Who a request is from, for stickiness: `X-Client-Key`, else the first address of
    `X-Forwarded-For` (behind a proxy), else the peer's address. Not the API key: the server
    has one, so it would put every keyed client in one cohort."""
    headers = request.headers
    value = headers.get(CLIENT_KEY_HEADER)
    if value:
        return f"{CLIENT_KEY_HEADER}:{value}"
    forwarded = (headers.get("x-forwarded-for") or "").split(",")[0].strip()
    if forwarded:
        return f"ip:{forwarded}"
    host = request.client.host if request.client else "unknown"
    return f"ip:{host}"


@dataclass(frozen=True)
class Canary:
    """One running canary: its model, the share of clients it answers, since when and why."""

    model: ServedModel
    share: float
    started_at: datetime

    def answers(self, key: str) -> bool:
        """Whether the client with `key` is answered by the canary."""
        return client_point(key) < self.share

    def describe(self) -> dict[str, Any]:
        """The canary as `/admin/releases` reports it."""
        return {"model_version": self.model.version, "share": self.share,
                "started_at": self.started_at.isoformat(), "source": dict(self.model.source)}


class CanaryRelease:
    """The app's canary, if any: started, re-shared and ended by admin routes and reloads.

    The running `Canary` is frozen and swapped whole, like the champion, so a request reads
    one consistent (model, share) pair.
    """

    def __init__(self, holder: ModelHolder):
        self.holder = holder
        self._canary: Canary | None = None
        self._lock = threading.Lock()  # start/stop/share changes; readers never take it
        self.ended: dict[str, Any] | None = None  # the last canary that ended, and why
        holder.on_reload(self._after_reload)

    @property
    def current(self) -> Canary | None:
        """The running canary, or None."""
        return self._canary

    def model_for(self, key: str) -> ServedModel:
        """The model that answers the client with `key`: the canary's or the champion."""
        canary = self._canary
        if canary is not None and canary.answers(key):
            return canary.model
        return self.holder.current

    def start(self, share: float, model_uri: str | None = None,
              bundle: Path | None = None) -> Canary | None:
        """Serve `share` of clients with the named model (a running canary is replaced); with
        no model named, change the running canary's share, or start one of the model a reload
        would load (the server's alias re-resolved). A share of 0 ends the canary."""
        if not 0 <= share <= 1:
            raise InvalidInput(f"canary share {share!r} must be within [0, 1]")
        with self._lock:
            running = self._canary
            if not model_uri and bundle is None and running is not None:
                if share == 0:
                    self._end("share set to 0")
                    return None
                self._canary = Canary(running.model, share, running.started_at)
                return self._canary
            if share == 0:
                self._end("share set to 0")
                return None
            model = self.holder.load_challenger(model_uri, bundle, observed=True)
            self._canary = Canary(model, share, datetime.now(UTC))
            log.info("canary %s answers %.1f%% of clients", model.version, share * 100)
            return self._canary

    def stop(self, reason: str = "stopped by DELETE /admin/canary") -> Canary | None:
        """End the running canary (its clients go back to the champion); returns it, or None."""
        with self._lock:
            return self._end(reason)

    def _end(self, reason: str) -> Canary | None:
        canary, self._canary = self._canary, None
        if canary is not None:
            self.ended = {**canary.describe(), "ended_at": datetime.now(UTC).isoformat(),
                          "reason": reason}
            log.info("canary %s ended: %s", canary.model.version, reason)
        return canary

    def _after_reload(self, done: Reload) -> None:
        # A promotion: the canary's model is the champion now, so every client gets it.
        canary = self._canary
        if canary is not None and canary.model.version == done.current.version:
            with self._lock:
                if self._canary is canary:
                    self._end(f"promoted: {done.current.version} is the champion")


def install(app: FastAPI, settings: Settings, holder: ModelHolder) -> CanaryRelease:
    """Give the app its canary release (`app.state.canary`), started now when the settings
    name one (MODALFUSE_CANARY_SHARE with MODALFUSE_CANARY_MODEL_URI or _BUNDLE)."""
    release = CanaryRelease(holder)
    app.state.canary = release
    named = settings.canary_model_uri or settings.canary_bundle is not None
    if settings.canary_share > 0 and not named:
        raise InvalidInput("MODALFUSE_CANARY_SHARE is set but no canary model is: set "
                           "MODALFUSE_CANARY_MODEL_URI or MODALFUSE_CANARY_BUNDLE")
    if named and settings.canary_share > 0:
        release.start(settings.canary_share, settings.canary_model_uri, settings.canary_bundle)
    elif named:
        log.info("a canary model is set but MODALFUSE_CANARY_SHARE is 0: no canary")
    return release
