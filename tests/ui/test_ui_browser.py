"""The UI in a real browser: Debian's Chromium (headless) opens /ui on a live uvicorn server
and uses it as a person would: an empty form, the bundle's example, a prediction with its
explanation, edits that clear it, the fields alone, and an out-of-distribution image alone."""

from __future__ import annotations

import re

import httpx
import pytest

from modalfuse.config import Settings
from ui_driver import (
    heatmap_src,
    live_server,
    load_example,
    predict,
    read,
    set_opacity,
    ui_page,
    upload,
    wait_cleared,
)

pytestmark = pytest.mark.slow  # starts Chromium against a live server

SHARE = re.compile(r"(table|image) share (-?\d+\.\d) %")
POINTS = re.compile(r"image \(whole image\)\s+(-?\d+(?:\.\d+)?)")


def _noise_png(path):
    import numpy as np
    from PIL import Image

    px = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(px, "RGB").save(path, format="PNG")
    return path


def test_ui_predicts_and_explains_in_chromium(predictor, tmp_path):
    from modalfuse.serve.app import create_app

    app = create_app(Settings(), predictor=predictor)
    explainer = app.state.model_holder.current.explainer
    example = predictor.bundle.meta["example"]
    noise = _noise_png(tmp_path / "noise.png")
    shot = tmp_path / "ui.png"
    with live_server(app) as url, ui_page(url) as (page, events):
        api_version = httpx.get(f"{url}/health").json()["model_version"]
        # The form opens empty, and says so.
        assert "Empty form" in read(page)["source"]
        assert page.locator("#mf-field-hp input").input_value() == ""

        # The bundle's example: labelled as such, its image shown, then explained.
        load_example(page)
        assert "bundle's example" in read(page)["source"]
        predict(page)
        page.screenshot(path=str(shot), full_page=True)
        seen = read(page)
        assert predictor.model_version in seen["status"] and api_version in seen["header"]
        predicted = seen["status"].split("Predicted ")[1].split(" (")[0]
        assert predicted in predictor.labels and predicted in seen["top"]
        # The bar and the status line state the same signed shares, from one definition.
        in_status, in_bar = dict(SHARE.findall(seen["status"])), dict(SHARE.findall(seen["share"]))
        assert set(in_status) == {"table", "image"} and in_status == in_bar, (seen["status"],
                                                                             seen["share"])
        e = explainer.explain(example["fields"], __import__("base64").b64decode(
            example["image_base64"]))
        assert float(in_status["image"]) == round(100 * e.image_share, 1)
        # Contributions in the unit they are labelled with: percentage points.
        assert "percentage points" in seen["contributions"]
        shown = float(POINTS.search(seen["contributions"]).group(1))
        assert abs(shown - 100 * e.image_contribution) < 0.006
        # The heatmap: its legend says which colour supports the class; opacity is adjustable.
        assert "orange" in seen["legend"] and "supports" in seen["legend"] and "pp" in seen["legend"]
        before = heatmap_src(page)
        assert before.startswith("http") and httpx.get(before).content[:8] == b"\x89PNG\r\n\x1a\n"
        assert page.locator("#mf-opacity input[type=range]").count() == 1
        # The prediction set with its coverage, and the inputs it was made from.
        assert "Prediction set at" in seen["trust"] and "coverage" in seen["trust"]
        assert "fields and image" in seen["trust"]

        # Editing a field clears the answer to the old input.
        hp = page.locator("#mf-field-hp input")
        hp.fill("80")
        hp.press("Tab")
        wait_cleared(page)
        assert heatmap_src(page) == "" and "share" not in read(page)["share"]

        # Removing the image clears again; the fields alone are then predicted, no heatmap.
        predict(page)
        page.locator("#mf-sprite button[aria-label='Clear']").click()
        wait_cleared(page)
        predict(page)
        seen = read(page)
        assert "fields only" in seen["status"] and "image +0.0 pp" in seen["status"]
        assert heatmap_src(page) == "" and "No heatmap" in seen["legend"]

        # An image alone, of noise: displayed once uploaded, flagged out of distribution,
        # and its near-certain probability never reads 100 %.
        page.locator("#mf-clear").click()
        page.locator("#mf-source").get_by_text("Empty form").wait_for()
        upload(page, noise, events)
        predict(page)
        seen = read(page)
        assert "image only" in seen["status"]
        assert "Out of distribution" in seen["trust"] and "unlike the training images" in seen["trust"]
        best = max(predictor.predict([{}], [noise.read_bytes()])[0]["probabilities"].values())
        assert best == 1.0 or not any(t.startswith("100") for t in seen["top_p"]), seen["top_p"]
        # The opacity slider redraws the heatmap (a heatmap of zeros looks the same at any).
        before = heatmap_src(page)
        set_opacity(page, 0.2)
        if explainer.explain({}, noise.read_bytes()).heat_scale > 0:
            page.wait_for_function("s => { const i = document.querySelector('#mf-heatmap img');"
                                   " return i && i.src !== s; }", arg=before)
    assert shot.stat().st_size > 20_000
