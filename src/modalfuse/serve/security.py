"""API-key authentication for routes that change state or reveal operations data.

Prediction routes are open; jobs and admin routes require `X-API-Key`. In development
mode with no key configured, protected routes are refused rather than left open. The key
is read from that header only: a key in the URL (`?api_key=`) is refused with a 401 that
says so, because URLs end up in access logs, proxies and browser history.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from modalfuse.serve.deps import SettingsDep

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="the key set in MODALFUSE_API_KEY")

# Query parameter names a client might put the key in; lower-cased before comparing.
KEY_QUERY_NAMES = frozenset({"api_key", "apikey", "api-key", "x-api-key", "x_api_key"})


async def require_api_key(request: Request, settings: SettingsDep,
                          key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    """Let the request through only with the server's key in the `X-API-Key` header."""
    in_url = sorted({n for n in request.query_params if n.lower() in KEY_QUERY_NAMES})
    if in_url:
        raise HTTPException(401, detail=f"the API key is not accepted in the URL (query "
                                        f"parameter {in_url[0]!r}); send it in the X-API-Key "
                                        "header, and change the key if the URL was shared or "
                                        "logged", headers={"WWW-Authenticate": "APIKey"})
    if not settings.api_key:
        raise HTTPException(403, detail="this route needs MODALFUSE_API_KEY to be set on the server")
    if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
        raise HTTPException(401, detail="missing or wrong X-API-Key header",
                            headers={"WWW-Authenticate": "APIKey"})


AuthDep = Annotated[None, Depends(require_api_key)]
