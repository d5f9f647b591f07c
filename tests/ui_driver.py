"""Drives the Gradio UI in Debian's Chromium (headless) with playwright: upload an image,
press "Predict and explain", wait for the prediction and the heatmap, take a screenshot.

Used by the browser test and by scripts/ui_screenshot.py (the picture in the docs).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app, timeout: float = 60.0):
    """Run an ASGI app under a real uvicorn server in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port} within {timeout} s")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def predict_in_browser(base_url: str, image: Path, screenshot: Path,
                       timeout_ms: int = 90_000) -> dict:
    """Open /ui, upload `image`, predict; returns what the page shows. Saves a screenshot."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install "
                           "chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(timeout_ms)
            # What the page did, for the failure message: POSTs, their answers, console errors.
            events: list[str] = []
            page.on("requestfailed", lambda r: events.append(f"failed {r.method} {r.url}"))
            page.on("response", lambda r: events.append(f"{r.status} {r.request.method} {r.url}")
                    if r.request.method != "GET" or r.status >= 400 else None)
            page.on("console", lambda m: events.append(f"console {m.type}: {m.text[:300]}")
                    if m.type in ("error", "warning") else None)
            # The upload finishes when the file's name (or its preview) shows in the component.
            # On a loaded machine Gradio's event stream can drop (its queue connection fails
            # and the page never renders the upload): open the page afresh, up to 3 times.
            for attempt in range(3):
                page.goto(f"{base_url}/ui/", wait_until="domcontentloaded")
                page.locator("#mf-go").wait_for(state="visible")
                uploaded = page.locator("#mf-sprite").get_by_text(image.name).or_(
                    page.locator("#mf-sprite img")).first
                page.locator("#mf-sprite input[type=file]").set_input_files(str(image))
                try:
                    uploaded.wait_for(timeout=timeout_ms // 3)
                    break
                except Exception as e:
                    if attempt == 2:
                        raise AssertionError(f"the upload never showed; the page did: "
                                             f"{events[-20:]}") from e
                    events.append(f"-- attempt {attempt + 1} failed; reloading the page --")
            page.locator("#mf-go").click()
            page.locator("#mf-heatmap img").first.wait_for(state="visible")
            page.locator("#mf-status").get_by_text("Predicted").first.wait_for()
            page.wait_for_timeout(500)  # let the label bars finish their transition
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            heat_src = page.locator("#mf-heatmap img").first.get_attribute("src") or ""
            return {
                "status": page.locator("#mf-status").inner_text(),
                "top": page.locator("#mf-top").inner_text(),
                "share": page.locator("#mf-share").inner_text(),
                "contributions": page.locator("#mf-contrib").inner_text(),
                "header": page.locator("#mf-header").inner_text(),
                "heatmap_src": heat_src,
            }
        finally:
            browser.close()
