"""API-key authentication for routes that change state or reveal operations data.

Prediction routes are open; jobs and admin routes require `X-API-Key`. In development
mode with no key configured, protected routes are refused rather than left open.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import APIKeyHeader

from modalfuse.serve.deps import SettingsDep

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="the key set in MODALFUSE_API_KEY")


def require_api_key(settings: SettingsDep,
                    key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    if not settings.api_key:
        raise HTTPException(403, detail="this route needs MODALFUSE_API_KEY to be set on the server")
    if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
        raise HTTPException(401, detail="missing or wrong X-API-Key header",
                            headers={"WWW-Authenticate": "APIKey"})


AuthDep = Annotated[None, Depends(require_api_key)]
