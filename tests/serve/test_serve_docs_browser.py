"""The API docs in a real browser with no way out: Debian's Chromium (headless) opens /docs and
/redoc on a live uvicorn server while every request to another host is refused and recorded.
Swagger UI lists the operations and "Try it out" succeeds with the examples it fills in;
ReDoc renders the operations."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlparse

import pytest

from modalfuse.config import Settings
from ui_driver import CHROMIUM, CHROMIUM_ARGS, live_server

pytestmark = [
    pytest.mark.slow,  # starts Chromium against a live server
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing: run `make browser-deps`"),
]

# ReDoc's footer hard-codes Redocly's logo on its CDN; the docs' CSP refuses it in the browser
# (no request is made) and ReDoc hides the image. Anything else refused is a finding.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
RECORD_CSP = ("window.__refused = [];document.addEventListener('securitypolicyviolation',"
              "e => window.__refused.push(e.blockedURI));")


def try_it_out(page, op_id: str, image: Path | None = None) -> str:
    """Open one Swagger UI operation, press "Try it out" and "Execute" with what it fills in
    (choosing `image` for a file field); returns the status code the page shows."""
    op = page.locator(f"[id='{op_id}']")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    if image is not None:
        op.locator("input[type=file]").set_input_files(str(image))
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    return status.inner_text().strip()


def test_docs_and_redoc_render_with_no_outside_request(predictor, tmp_path):
    from playwright.sync_api import sync_playwright

    from modalfuse.serve.app import create_app

    sprite = tmp_path / "example.png"
    sprite.write_bytes(base64.b64decode(predictor.bundle.meta["example"]["image_base64"]))
    app = create_app(Settings(data_dir=tmp_path / "data"), predictor=predictor)
    outside: list[str] = []

    def only_this_server(route) -> None:
        url = urlparse(route.request.url)
        if url.scheme in ("data", "blob") or url.hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with live_server(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(60_000)
            page.add_init_script(RECORD_CSP)
            page.route("**/*", only_this_server)

            page.goto(f"{base}/docs", wait_until="networkidle")
            paths = page.locator(".opblock-summary-path")
            paths.filter(has_text="/v1/predict/upload").first.wait_for()
            listed = {t.replace("\u200b", "") for t in paths.all_inner_texts()}
            assert {"/v1/predict", "/v1/predict/batch", "/v1/predict/upload", "/v1/explain",
                    "/v1/jobs", "/health"} <= listed, listed
            assert try_it_out(page, "operations-predict-predict_v1_predict_post") == "200"
            assert try_it_out(page, "operations-predict-predict_batch_v1_predict_batch_post") == "200"
            assert try_it_out(page, "operations-predict-predict_upload_v1_predict_upload_post",
                              image=sprite) == "200"
            refused_on_docs = page.evaluate("window.__refused")

            page.goto(f"{base}/redoc", wait_until="networkidle")
            title = page.locator("h2", has_text="Predict one record from its fields and a base64 image")
            title.first.wait_for(state="visible")
            assert page.locator("h2", has_text="Submit a batch job").count() == 1
            refused_on_redoc = page.evaluate("window.__refused")
        finally:
            browser.close()
    assert outside == [], f"requests to other hosts were attempted: {outside}"
    assert refused_on_docs == []
    assert set(refused_on_redoc) <= {REDOC_LOGO}, refused_on_redoc
