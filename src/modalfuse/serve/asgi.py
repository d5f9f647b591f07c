"""ASGI entry for process managers: `uvicorn --factory modalfuse.serve.asgi:app`.

Settings come from MODALFUSE_* variables; logs are JSON lines on stderr, configured by
`serve.logging.log_config` exactly as `modalfuse serve` configures them.
"""

from __future__ import annotations

from fastapi import FastAPI

from modalfuse.serve.app import create_app
from modalfuse.serve.logging import configure_logging


def app() -> FastAPI:
    """Build the served app with JSON logging, as the factory uvicorn calls."""
    configure_logging()
    return create_app()
