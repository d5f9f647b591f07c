"""Screenshot of the UI for the docs: serve a bundle, fill the form from its example (fields
and image) in Chromium, predict and explain, save the page as a PNG.

    python scripts/ui_screenshot.py --bundle <bundle folder> --out docs/ui.png

Uses the same browser driver as the browser test (tests/ui_driver.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from modalfuse.config import Settings
from modalfuse.serve.app import create_app
from ui_driver import live_server, predict_in_browser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None,
                        help="bundle folder (default: the pokemon dataset's latest)")
    parser.add_argument("--out", type=Path, default=Path("docs/ui.png"))
    args = parser.parse_args()
    settings = Settings()
    bundle = args.bundle or settings.bundle or settings.default_bundle("pokemon")
    app = create_app(Settings(bundle=bundle))
    example = app.state.model_holder.current.predictor.bundle.meta.get("example")
    if not example:
        raise SystemExit(f"{bundle} has no example record to upload")
    with live_server(app) as url:
        seen = predict_in_browser(url, None, args.out)
    sys.stdout.write(f"{args.out}: {seen['status']}\n")


if __name__ == "__main__":
    main()
