"""The API's documentation pages, /docs (Swagger UI) and /redoc, working with no network.

FastAPI's own pages load their scripts, styles and favicon from CDNs. These are served by
the API itself from the files the `fastapi-offline` package installs, and a
Content-Security-Policy on both pages tells the browser to fetch nothing from another
origin. That also covers the one outside URL left in ReDoc's bundle, the Redocly logo
in its footer: the browser refuses it and ReDoc hides the image.

`document_operations` adds to the OpenAPI document what "Try it out" needs to know about
the routes that take an API key, uploaded files or an id from an earlier answer.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from modalfuse.spec import DatasetSpec

DOCS_ASSETS_URL = "/static/docs"
SWAGGER_JS, SWAGGER_CSS = "swagger-ui-bundle.js", "swagger-ui.css"
REDOC_JS, FAVICON = "redoc.standalone.js", "favicon.png"
# Inline script and styles are the pages' own (FastAPI's templates, ReDoc's styled
# components); ReDoc's search runs in a worker made from a blob: URL.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
            "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'self'; "
            "form-action 'self'; base-uri 'self'")
API_KEY_NOTE = ("Needs the API key: press **Authorize** and give the server's "
                "`MODALFUSE_API_KEY` (header `X-API-Key`).")


def docs_assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's files, as installed by `fastapi-offline`."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, spec: DatasetSpec) -> None:
    """Serve /docs, /redoc and their assets; `app` must be built with docs_url=None and
    redoc_url=None so FastAPI's CDN pages are not there too."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/{FAVICON}",
            # No badge from the public validator: it would send it the document's URL.
            swagger_ui_parameters={"validatorUrl": None})
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/{FAVICON}", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_operations(generate(), spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_operations(schema: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """Say in the OpenAPI document how to call, from "Try it out", the operations whose
    defaults alone cannot succeed: API key, uploaded files, ids from earlier answers."""
    paths = schema.get("paths", {})
    for operations in paths.values():
        for op in operations.values():
            if op.get("security"):
                _add_description(op, API_KEY_NOTE)
    submit = paths.get("/v1/jobs", {}).get("post")
    if submit is not None:
        _add_description(submit, (
            f"In *Try it out*, choose the `table` (.csv or .parquet: one row per record, the "
            f"record's fields as columns and `{spec.image_column}` naming its image) and the "
            "`images` zip that holds those files; or, where the server sets "
            "`MODALFUSE_JOBS_ROOT`, give `table_path` and `images_path` instead."))
    for path, operations in paths.items():
        for op in operations.values():
            for param in op.get("parameters", []):
                if path.startswith("/v1/jobs/") and param["name"] == "job_id":
                    param.setdefault("description", "the `id` that `POST /v1/jobs` answered")
    reload = paths.get("/admin/reload", {}).get("post")
    if reload is not None and "requestBody" in reload:
        media = reload["requestBody"]["content"]["application/json"]
        media.setdefault("examples", {"reload": {
            "summary": "reload the server's own model source (re-resolves a registry alias)",
            "value": {}}})
    return schema


def _add_description(op: dict[str, Any], text: str) -> None:
    current = op.get("description", "")
    if text not in current:
        op["description"] = f"{current}\n\n{text}".strip()
