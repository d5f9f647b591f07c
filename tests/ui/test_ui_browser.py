"""The UI in a real browser: Debian's Chromium (headless) opens /ui on a live uvicorn server,
uploads a sprite, and gets a prediction and a heatmap from the model the API serves."""

from __future__ import annotations

import httpx

from modalfuse.config import Settings
from ui_driver import live_server, predict_in_browser


def test_ui_predicts_and_explains_in_chromium(predictor, fixture_dataset, tmp_path):
    from modalfuse.serve.app import create_app

    app = create_app(Settings(), predictor=predictor)
    spec = predictor.spec
    row = fixture_dataset.table.iloc[0]
    sprite = fixture_dataset.image_path(row[spec.image_column])
    shot = tmp_path / "ui.png"
    with live_server(app) as url:
        seen = predict_in_browser(url, sprite, shot)
        api_version = httpx.get(f"{url}/health").json()["model_version"]
        heat = httpx.get(seen["heatmap_src"]) if seen["heatmap_src"].startswith("http") else None
    assert api_version == predictor.model_version
    assert predictor.model_version in seen["status"] and predictor.model_version in seen["header"]
    predicted = seen["status"].split("Predicted ")[1].split(" (")[0]
    assert predicted in predictor.labels and predicted in seen["top"]
    assert "image" in seen["share"] and "table" in seen["share"]
    assert "contribution" in seen["contributions"]
    assert heat is not None and heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
