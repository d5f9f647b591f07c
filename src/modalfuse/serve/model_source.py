"""Where the API's model comes from: a registry URI (`models:/NAME@champion`) or a bundle folder.

The registry is consulted at start and on every `/admin/reload`, so moving the
`champion` alias and reloading is how a new model goes live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modalfuse.config import Settings
from modalfuse.predict import Predictor


def load_served_predictor(settings: Settings, model_uri: str | None = None,
                          bundle: Path | None = None) -> tuple[Predictor, dict[str, Any]]:
    """The Predictor to serve and a description of its source (uri, name, version, alias).

    Explicit arguments win over settings; a model URI wins over a bundle path.
    """
    uri = model_uri or (None if bundle else settings.model_uri)
    path = bundle or settings.bundle
    if uri:
        from modalfuse.registry import fetch_bundle

        path, source = fetch_bundle(uri, settings)
    elif path is not None:
        source = {"uri": None, "bundle": str(path)}
    else:
        raise ValueError("no model to serve: set MODALFUSE_MODEL_URI (e.g. "
                         "models:/pokemon@champion) or MODALFUSE_BUNDLE (a bundle folder)")
    predictor = Predictor.from_path(path, max_image_bytes=settings.max_image_bytes,
                                    max_image_pixels=settings.max_image_pixels)
    return predictor, {**source, "model_version": predictor.model_version}
