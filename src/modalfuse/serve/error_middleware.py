"""The error middleware, the last line of defence: a server bug answers a generic 500 (no
internals) and is logged.

Every failure caused by the input is a 4xx raised where the input is understood (routes,
the Predictor, uploads). What reaches this middleware is a bug of the server: the client
gets a JSON 500 with the request id to quote, never a traceback or a server path; the log
gets the traceback with the same request id.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalfuse.monitor.context import request_id_var

log = logging.getLogger("modalfuse.serve")

GENERIC_500 = "internal server error: the server failed to answer this request; it has been " \
              "logged. Quote the request id when you report it."


class ServerErrors:
    """Turn an unhandled exception into a generic JSON 500 and log it (installed innermost,
    so the request id and the metrics middleware see the answer)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            rid = request_id_var.get(None)
            log.exception("unhandled error", extra={"path": scope.get("path"),
                                                    "method": scope.get("method")})
            if started:  # the answer is half sent: nothing better to do than drop it
                raise
            resp = JSONResponse({"detail": GENERIC_500, "request_id": rid}, status_code=500)
            await resp(scope, receive, send)
