"""The request a log line or a prediction-log row belongs to: a context variable the API sets
per request (serve) and the prediction log reads (monitor)."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("modalfuse_request_id", default=None)
