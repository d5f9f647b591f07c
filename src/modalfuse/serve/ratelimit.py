"""The CPU budget of the serving routes: per-client limits (429) and the pixel budget (413).

A request that makes the server decode and score is cheap to send and dear to answer, so
POSTs to the prediction, explanation and job-creation routes and to the UI are limited per
client: a token bucket (`rate_limit_per_s`, `rate_limit_burst`) and a cap on requests in
flight (`max_concurrent_per_client`); 0 turns either off. A refused request gets 429 with
a Retry-After header. GETs (UI assets, job polling) are not counted.

A client is its IP address as the server sees it (`scope["client"]`; behind a proxy, run
uvicorn with `--proxy-headers` and `--forwarded-allow-ips` so that is the real client),
plus the API key when the request carries the valid one: key holders behind a shared
address get their own budget, and an invented key gets nothing new. Limits are per server
process; with N workers a client may have N times as much.

The pixel budget (`max_request_pixels`) is enforced by the Predictor from image headers
(`PixelBudgetError`); `install` answers it with 413.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from modalfuse.config import Settings
from modalfuse.inference.predictor import PixelBudgetError

# POSTs under these paths are limited (a prefix matches itself and what lies below it).
LIMITED_PREFIXES = ("/v1/predict", "/v1/explain", "/v1/jobs", "/ui")
LIMITED_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass
class Refusal:
    """Why a request was refused, and after how many seconds a retry can succeed."""

    message: str
    retry_after_s: int


@dataclass
class _Client:
    tokens: float
    updated: float
    in_flight: int = 0


class ClientLimiter:
    """Per-client token buckets and in-flight counts; remembers at most `max_clients` idle
    clients (the least recently seen are forgotten first).

    Not thread-safe by design: it is only used from the event loop, between awaits.
    """

    def __init__(self, rate_per_s: float, burst: int, max_concurrent: int,
                 max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s, self.burst, self.max_concurrent = rate_per_s, burst, max_concurrent
        self.max_clients, self.clock = max_clients, clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientLimiter:
        """The limiter configured by the rate, burst and concurrency settings."""
        return cls(settings.rate_limit_per_s, settings.rate_limit_burst,
                   settings.max_concurrent_per_client)

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (a rate or a concurrency cap above 0)."""
        return self.rate_per_s > 0 or self.max_concurrent > 0

    def acquire(self, key: str) -> Refusal | None:
        """Count a request of `key` in; None if it may go ahead (then `release` it)."""
        now = self.clock()
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _Client(tokens=float(self.burst), updated=now)
            self._forget_idle(keep=key)
        else:
            self._clients.move_to_end(key)
        if self.max_concurrent and client.in_flight >= self.max_concurrent:
            return Refusal(f"too many requests in flight from this client; the limit is "
                           f"{self.max_concurrent} at a time", 1)
        if self.rate_per_s > 0:
            client.tokens = min(float(self.burst),
                                client.tokens + (now - client.updated) * self.rate_per_s)
            client.updated = now
            if client.tokens < 1.0:
                wait = max(1, math.ceil((1.0 - client.tokens) / self.rate_per_s))
                return Refusal(f"too many requests from this client; the limit is "
                               f"{self.rate_per_s:g} per second (bursts of {self.burst})", wait)
            client.tokens -= 1.0
        client.in_flight += 1
        return None

    def release(self, key: str) -> None:
        """Count a finished request of `key` out of its in-flight total."""
        client = self._clients.get(key)
        if client is not None and client.in_flight > 0:
            client.in_flight -= 1

    def _forget_idle(self, keep: str) -> None:
        if len(self._clients) <= self.max_clients:
            return
        for key in [k for k, c in self._clients.items() if c.in_flight == 0 and k != keep]:
            del self._clients[key]
            if len(self._clients) <= self.max_clients:
                return


def is_limited(method: str, path: str) -> bool:
    """Whether a request of this method and path is counted against its client."""
    return method in LIMITED_METHODS and any(
        path == p or path.startswith(p + "/") for p in LIMITED_PREFIXES)


class ClientRateLimit:
    """ASGI middleware: refuse a client's limited requests over its budget with 429."""

    def __init__(self, app: ASGIApp, limiter: ClientLimiter, api_key: str = ""):
        self.app, self.limiter, self.api_key = app, limiter, api_key.encode()

    def client_key(self, scope: Scope) -> str:
        """The bucket a request counts against: the client host, kept apart when it sends the API key."""
        client = scope.get("client")
        host = str(client[0]) if client else "unknown"
        if self.api_key:
            sent = dict(scope.get("headers") or []).get(b"x-api-key")
            if sent is not None and hmac.compare_digest(sent, self.api_key):
                return f"{host} +key"
        return host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_limited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        key = self.client_key(scope)
        refusal = self.limiter.acquire(key)
        if refusal is not None:
            resp = JSONResponse({"detail": refusal.message}, status_code=429,
                                headers={"Retry-After": str(refusal.retry_after_s)})
            await resp(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(key)


async def pixel_budget_exceeded(request: Request, exc: PixelBudgetError) -> JSONResponse:
    """413: the request's images have more pixels than one request may decode."""
    return JSONResponse({"detail": f"{exc} (MODALFUSE_MAX_REQUEST_PIXELS)"}, status_code=413)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the per-client limits (if any is on) and the 413 of the pixel budget to an app."""
    app.add_exception_handler(PixelBudgetError, pixel_budget_exceeded)  # type: ignore[arg-type]
    limiter = ClientLimiter.from_settings(settings)
    if limiter.enabled:
        app.add_middleware(ClientRateLimit, limiter=limiter, api_key=settings.api_key)
