"""Structured JSON logs for the API, each line carrying the request id of the request it is about.

The request id comes from the client's `X-Request-ID` header when it is sane, otherwise it
is made here; it is echoed in the response and put on every log line written meanwhile.
`log_config` is the one logging setup of every server (the container's uvicorn factory and
`modalfuse serve`). Query strings never reach a log: the API's access line records the path
only, uvicorn's access log (which prints the whole URL) is off, and were it turned on every
query value in it is replaced with `REDACTED`.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from modalfuse.monitor.context import request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# LogRecord attributes that are not "extra" fields a caller added (uvicorn's color_message
# is its message again with terminal colour codes).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName",
                                                    "color_message"}


def request_id_from(header: str | None) -> str:
    """The client's id if it is short and printable (it goes into logs), else a fresh one."""
    if header and _SAFE_ID.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line, with the current request id and the exception if any."""
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def redact_query(target: str) -> str:
    """`path?a=1&api_key=s` -> `path?a=REDACTED&api_key=REDACTED`: names kept, every value hidden.

    A part without `=` may itself be a token (`?s3cr3t`), so it is hidden whole.
    """
    path, sep, query = target.partition("?")
    if not sep or not query:
        return target
    parts = [f"{part.partition('=')[0]}=REDACTED" if "=" in part else "REDACTED"
             for part in query.split("&")]
    return f"{path}?{'&'.join(parts)}"


class RedactQuery(logging.Filter):
    """Hides the query values in uvicorn's access records (args: client, method, path, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the path's query values in place; never drops a record."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def log_config(level: str = "INFO") -> dict[str, Any]:
    """`logging.config.dictConfig` for a server: modalfuse and uvicorn logs as JSON on stderr.

    Pass it to `uvicorn.run(log_config=...)` with `access_log=False`: the API writes its own
    access line (`modalfuse.access`), with the request id and without the query string.
    """
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
               "formatter": "json"}
    loggers: dict[str, Any] = {
        name: {"handlers": ["stderr"], "level": level, "propagate": False}
        for name in ("modalfuse", "uvicorn", "uvicorn.error")}
    loggers["uvicorn.access"] = {"handlers": ["stderr"], "level": level, "propagate": False,
                                 "filters": ["redact_query"]}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "filters": {"redact_query": {"()": RedactQuery}},
            "handlers": {"stderr": handler}, "loggers": loggers}


def configure_logging(level: str = "INFO") -> None:
    """Apply `log_config` (called by the container's app factory, after uvicorn's own setup)."""
    logging.config.dictConfig(log_config(level))
    # Our access log has the request id and route; uvicorn's would duplicate it without them.
    logging.getLogger("uvicorn.access").disabled = True
    # What the JSON lines never show is not gathered per record (the Logging HOWTO's
    # "Optimization"): the caller's file and line (a stack walk), thread and process names.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
