"""Drives the Gradio UI in Debian's Chromium (headless) with playwright: fill the form or
upload an image, press "Predict and explain", wait for the answer, read what the page shows,
take a screenshot.

Used by the browser test and by scripts/ui_screenshot.py (the picture in the docs).
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from prod_helpers import wait_until

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

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn on port {port} stopped before it started")
        return server.started

    wait_until(started, timeout, f"uvicorn to start on port {port}", interval=0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def ui_page(base_url: str, timeout_ms: int = 90_000):
    """A Chromium page on /ui, loaded; yields (page, events): what the page did (POSTs,
    their answers, console errors), for failure messages."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install "
                           "chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(timeout_ms)
            events: list[str] = []
            page.on("requestfailed", lambda r: events.append(f"failed {r.method} {r.url}"))
            page.on("response", lambda r: events.append(f"{r.status} {r.request.method} {r.url}")
                    if r.request.method != "GET" or r.status >= 400 else None)
            page.on("console", lambda m: events.append(f"console {m.type}: {m.text[:300]}")
                    if m.type in ("error", "warning") else None)
            page.goto(f"{base_url}/ui/", wait_until="domcontentloaded")
            page.locator("#mf-go").wait_for(state="visible")
            yield page, events
        finally:
            browser.close()


def upload(page, image: Path, events: list[str], timeout_ms: int = 90_000) -> None:
    """Upload `image` into the image input and wait until its preview shows.

    On a loaded machine Gradio's event stream can drop (its queue connection fails and the
    page never renders the upload): open the page afresh, up to 3 times (which empties
    the form: upload first)."""
    for attempt in range(3):
        page.locator("#mf-sprite input[type=file]").set_input_files(str(image))
        try:
            page.locator("#mf-sprite").get_by_text(image.name).first.wait_for(
                timeout=timeout_ms // 3)
            page.locator("#mf-preview img").first.wait_for(state="visible",
                                                           timeout=timeout_ms // 3)
            return
        except Exception as e:
            if attempt == 2:
                raise AssertionError(f"the upload never showed; the page did: "
                                     f"{events[-20:]}") from e
            events.append(f"-- attempt {attempt + 1} failed; reloading the page --")
            page.reload(wait_until="domcontentloaded")
            page.locator("#mf-go").wait_for(state="visible")


def load_example(page) -> None:
    """Fill the form from the bundle's example (fields and image); wait for the preview."""
    page.locator("#mf-example").click()
    page.locator("#mf-source").get_by_text("bundle's example").wait_for()
    page.locator("#mf-preview img").first.wait_for(state="visible")


def predict(page) -> None:
    """Press "Predict and explain" and wait for the answer (and its heatmap, if any)."""
    page.locator("#mf-go").click()
    page.locator("#mf-status").get_by_text("Predicted").first.wait_for()
    page.locator("#mf-share-bar").wait_for()
    page.wait_for_timeout(500)  # let the bars and the image settle


def wait_cleared(page) -> None:
    """Wait until the answer is gone (the status is back to its prompt)."""
    page.locator("#mf-status").get_by_text("Fill in the fields").first.wait_for()


def heatmap_src(page) -> str:
    """The heatmap image's URL ('' when there is none)."""
    img = page.locator("#mf-heatmap img")
    return (img.first.get_attribute("src") or "") if img.count() else ""


def read(page) -> dict:
    """What the page shows now."""
    return {
        "status": page.locator("#mf-status").inner_text(),
        "source": page.locator("#mf-source").inner_text(),
        "trust": page.locator("#mf-trust").inner_text(),
        "top": page.locator("#mf-top").inner_text(),
        "top_p": page.locator("#mf-top .mf-p").all_inner_texts(),
        "share": page.locator("#mf-share").inner_text(),
        "legend": page.locator("#mf-legend").inner_text(),
        "contributions": page.locator("#mf-contrib").inner_text(),
        "header": page.locator("#mf-header").inner_text(),
        "heatmap_src": heatmap_src(page),
    }


def set_opacity(page, value: float) -> None:
    """Move the heatmap opacity slider to `value` (typed into its number box)."""
    box = page.locator("#mf-opacity input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def predict_in_browser(base_url: str, image: Path | None, screenshot: Path,
                       timeout_ms: int = 90_000) -> dict:
    """Open /ui, fill the form from the bundle's example (`image`: upload it instead, with
    no fields), predict; returns what the page shows. Saves a screenshot."""
    with ui_page(base_url, timeout_ms) as (page, events):
        if image is None:
            load_example(page)
        else:
            upload(page, image, events, timeout_ms)
        predict(page)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        return read(page)
